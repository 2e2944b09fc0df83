// The peer of homeplane's memory benchmark (bench/memory.sh): a minimal operator on
// controller-runtime that watches exactly what homeplane's controllers watch — the same kinds,
// owned objects, label selectors, metadata-only watches and namespaces (all of them) — maps
// events to the same objects, and does nothing else: every reconcile returns at once.
//
// Every replica also caches every homeplane kind, Drifts included, as homeplane's do.
//
// It is written the way a careful controller-runtime operator is: one shared informer per
// kind, managed fields stripped before caching (cache.TransformStripManagedFields), label
// selectors on the owned kinds, and homeplane's kinds as typed objects whose spec and status
// stay raw JSON (leaner than generated Go structs, so the comparison does not flatter
// homeplane). Leader election on a Lease, as homeplane does; no metrics or probe server.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
)

var groupVersion = schema.GroupVersion{Group: "homeplane.dev", Version: "v1alpha1"}

// Object is one homeplane kind; K only tells the kinds apart as Go types.
type Object[K any] struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              json.RawMessage `json:"spec,omitempty"`
	Status            json.RawMessage `json:"status,omitempty"`
}

func (o *Object[K]) DeepCopyObject() runtime.Object {
	out := &Object[K]{TypeMeta: o.TypeMeta, Spec: bytes.Clone(o.Spec), Status: bytes.Clone(o.Status)}
	o.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return out
}

// List is a list of one homeplane kind.
type List[K any] struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Object[K] `json:"items"`
}

func (l *List[K]) DeepCopyObject() runtime.Object {
	out := &List[K]{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	for i := range l.Items {
		out.Items = append(out.Items, *l.Items[i].DeepCopyObject().(*Object[K]))
	}
	return out
}

type (
	agentKind         struct{}
	agentRunKind      struct{}
	backupKind        struct{}
	backupPolicyKind  struct{}
	databaseKind      struct{}
	memoryServerKind  struct{}
	nodeClassKind     struct{}
	stateRegistryKind struct{}
	voicePipelineKind struct{}
	workflowKind      struct{}
	driftKind         struct{}
)

type (
	Agent         = Object[agentKind]
	AgentRun      = Object[agentRunKind]
	Backup        = Object[backupKind]
	BackupPolicy  = Object[backupPolicyKind]
	Database      = Object[databaseKind]
	MemoryServer  = Object[memoryServerKind]
	NodeClass     = Object[nodeClassKind]
	StateRegistry = Object[stateRegistryKind]
	VoicePipeline = Object[voicePipelineKind]
	Workflow      = Object[workflowKind]
	Drift         = Object[driftKind]
)

func register[K any](scheme *runtime.Scheme, kind string) {
	scheme.AddKnownTypeWithName(groupVersion.WithKind(kind), &Object[K]{})
	scheme.AddKnownTypeWithName(groupVersion.WithKind(kind+"List"), &List[K]{})
}

// spec reads the named fields of a raw spec (what the event mappings need).
func spec[T any](raw json.RawMessage) (T, bool) {
	var v T
	return v, json.Unmarshal(raw, &v) == nil
}

// nothing is every controller's reconcile.
var nothing = reconcile.Func(func(context.Context, reconcile.Request) (reconcile.Result, error) {
	return reconcile.Result{}, nil
})

func request(namespace, name string) reconcile.Request {
	return reconcile.Request{NamespacedName: types.NamespacedName{Namespace: namespace, Name: name}}
}

func main() {
	namespace := flag.String("leader-election-namespace", "homeplane-system", "namespace of the leader Lease")
	flag.Parse()
	ctrl.SetLogger(zap.New())
	log := ctrl.Log.WithName("peer")

	scheme := runtime.NewScheme()
	must(clientgoscheme.AddToScheme(scheme))
	metav1.AddToGroupVersion(scheme, groupVersion)
	register[agentKind](scheme, "Agent")
	register[agentRunKind](scheme, "AgentRun")
	register[backupKind](scheme, "Backup")
	register[backupPolicyKind](scheme, "BackupPolicy")
	register[databaseKind](scheme, "Database")
	register[memoryServerKind](scheme, "MemoryServer")
	register[nodeClassKind](scheme, "NodeClass")
	register[stateRegistryKind](scheme, "StateRegistry")
	register[voicePipelineKind](scheme, "VoicePipeline")
	register[workflowKind](scheme, "Workflow")
	register[driftKind](scheme, "Drift")

	// Owned objects are watched with homeplane's label, as homeplane's controllers do.
	managed := labels.SelectorFromSet(labels.Set{"app.kubernetes.io/managed-by": "homeplane"})
	owned := cache.ByObject{Label: managed}
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress:  "0",
		LeaderElection:          true,
		LeaderElectionID:        "homeplane-peer",
		LeaderElectionNamespace: *namespace,
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject: map[client.Object]cache.ByObject{
				&corev1.ServiceAccount{}: owned,
				&rbacv1.RoleBinding{}:    owned,
				&batchv1.Job{}:           owned,
				&corev1.Secret{}:         owned,
				&corev1.ConfigMap{}:      owned,
				&corev1.Service{}:        owned,
				&appsv1.Deployment{}:     owned,
				&appsv1.StatefulSet{}:    owned,
			},
		},
	})
	must(err)
	// Workflows watch every ConfigMap and Secret, metadata only: a cache of their own, since
	// the manager's holds the owned ones by label.
	everything, err := cache.New(mgr.GetConfig(), cache.Options{
		Scheme:           scheme,
		Mapper:           mgr.GetRESTMapper(),
		HTTPClient:       mgr.GetHTTPClient(),
		DefaultTransform: cache.TransformStripManagedFields(),
	})
	must(err)
	must(mgr.Add(everything))
	c := mgr.GetClient()

	must(ctrl.NewControllerManagedBy(mgr).Named("agent").
		For(&Agent{}).
		Owns(&corev1.ServiceAccount{}).
		Owns(&rbacv1.RoleBinding{}).
		Watches(&AgentRun{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			s, ok := spec[struct{ Agent string }](o.(*AgentRun).Spec)
			if !ok {
				return nil
			}
			return []reconcile.Request{request(o.GetNamespace(), s.Agent)}
		})).
		Complete(nothing))
	must(ctrl.NewControllerManagedBy(mgr).Named("agentrun").
		For(&AgentRun{}).
		Owns(&batchv1.Job{}).
		Complete(nothing))
	must(ctrl.NewControllerManagedBy(mgr).Named("backup").
		For(&Backup{}).
		Owns(&batchv1.Job{}).
		Complete(nothing))
	must(ctrl.NewControllerManagedBy(mgr).Named("backuppolicy").
		For(&BackupPolicy{}).
		Watches(&Backup{}, handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
			s, ok := spec[struct{ Policy string }](o.(*Backup).Spec)
			if !ok {
				return nil
			}
			return []reconcile.Request{request(o.GetNamespace(), s.Policy)}
		})).
		Complete(nothing))
	must(ctrl.NewControllerManagedBy(mgr).Named("database").
		For(&Database{}).
		Owns(&corev1.Secret{}).
		Owns(&appsv1.StatefulSet{}).
		Complete(nothing))
	must(ctrl.NewControllerManagedBy(mgr).Named("memoryserver").
		For(&MemoryServer{}).
		Owns(&appsv1.Deployment{}).
		Owns(&appsv1.StatefulSet{}).
		Owns(&corev1.Service{}).
		Watches(&Database{}, handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, o client.Object) []reconcile.Request {
			var servers List[memoryServerKind]
			if c.List(ctx, &servers, client.InNamespace(o.GetNamespace())) != nil {
				return nil
			}
			var out []reconcile.Request
			for _, ms := range servers.Items {
				s, ok := spec[struct{ Database struct{ Name string } }](ms.Spec)
				if ok && s.Database.Name == o.GetName() {
					out = append(out, request(ms.Namespace, ms.Name))
				}
			}
			return out
		})).
		Complete(nothing))
	everyClass := handler.EnqueueRequestsFromMapFunc(func(ctx context.Context, _ client.Object) []reconcile.Request {
		var classes List[nodeClassKind]
		if c.List(ctx, &classes) != nil {
			return nil
		}
		out := make([]reconcile.Request, 0, len(classes.Items))
		for _, nc := range classes.Items {
			out = append(out, request("", nc.Name))
		}
		return out
	})
	must(ctrl.NewControllerManagedBy(mgr).Named("nodeclass").
		For(&NodeClass{}).
		Watches(&corev1.Node{}, everyClass).
		Watches(&corev1.Pod{}, everyClass).
		Complete(nothing))
	must(ctrl.NewControllerManagedBy(mgr).Named("stateregistry").
		For(&StateRegistry{}).
		Complete(nothing))
	must(ctrl.NewControllerManagedBy(mgr).Named("voicepipeline").
		For(&VoicePipeline{}).
		Owns(&appsv1.Deployment{}).
		Owns(&appsv1.StatefulSet{}).
		Owns(&corev1.Service{}).
		Owns(&corev1.ConfigMap{}).
		Complete(nothing))
	referring := func(name func(json.RawMessage) (string, bool)) handler.TypedEventHandler[*metav1.PartialObjectMetadata, reconcile.Request] {
		return handler.TypedEnqueueRequestsFromMapFunc(func(ctx context.Context, o *metav1.PartialObjectMetadata) []reconcile.Request {
			var workflows List[workflowKind]
			if c.List(ctx, &workflows, client.InNamespace(o.Namespace)) != nil {
				return nil
			}
			var out []reconcile.Request
			for _, wf := range workflows.Items {
				if n, ok := name(wf.Spec); ok && n == o.Name {
					out = append(out, request(wf.Namespace, wf.Name))
				}
			}
			return out
		})
	}
	metadataOf := func(kind string) *metav1.PartialObjectMetadata {
		m := &metav1.PartialObjectMetadata{}
		m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind(kind))
		return m
	}
	must(ctrl.NewControllerManagedBy(mgr).Named("workflow").
		For(&Workflow{}).
		WatchesRawSource(source.Kind(everything, metadataOf("ConfigMap"), referring(func(raw json.RawMessage) (string, bool) {
			s, ok := spec[struct{ DefinitionFrom *struct{ Name string } }](raw)
			if !ok || s.DefinitionFrom == nil {
				return "", false
			}
			return s.DefinitionFrom.Name, true
		}))).
		WatchesRawSource(source.Kind(everything, metadataOf("Secret"), referring(func(raw json.RawMessage) (string, bool) {
			s, ok := spec[struct {
				N8n struct{ ApiKeySecret struct{ Name string } }
			}](raw)
			return s.N8n.ApiKeySecret.Name, ok
		}))).
		Complete(nothing))

	// Every replica, the standby too, caches every homeplane kind (homeplane's cache.rs, read
	// by its per-object metrics): informers asked for before the start run on every replica;
	// the controllers above share them once this replica leads.
	for _, kind := range []client.Object{&Agent{}, &AgentRun{}, &Backup{}, &BackupPolicy{}, &Database{},
		&MemoryServer{}, &NodeClass{}, &StateRegistry{}, &VoicePipeline{}, &Workflow{}, &Drift{}} {
		_, err := mgr.GetCache().GetInformer(context.Background(), kind)
		must(err)
	}

	log.Info("starting")
	must(mgr.Start(ctrl.SetupSignalHandler()))
}

func must(err error) {
	if err != nil {
		ctrl.Log.Error(err, "the peer failed")
		os.Exit(1)
	}
}
