// Command stages prints the KWOK stage configuration the test cluster runs with: KWOK's own
// "fast" node and pod stages (nodes become Ready and keep a Lease; scheduled pods become
// Running and Ready; pods of Jobs complete; deleted pods go away). They are read from the
// KWOK module itself so they always match the KWOK binary that is built beside them.
//
// One change: pods of agent runs (label homeplane.dev/agent-run) and of PVC backups (label
// homeplane.dev/backup-run) are not completed by KWOK. No container really runs on a simulated
// node, so the test (or the demo) decides how such a run ends by writing the pod's terminated
// state and termination message itself.
package main

import (
	"fmt"
	"os"
	"strings"

	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	nodelease "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat-with-lease"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
)

func main() {
	complete, err := skipLabelled(podfast.DefaultPodComplete, "homeplane.dev/agent-run", "homeplane.dev/backup-run")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	stages := []string{
		nodefast.DefaultNodeInit,
		nodelease.DefaultNodeHeartbeatWithLease,
		podfast.DefaultPodReady,
		complete,
		podfast.DefaultPodDelete,
	}
	for i, s := range stages {
		stages[i] = strings.TrimSpace(s)
	}
	fmt.Println(strings.Join(stages, "\n---\n"))
}

// skipLabelled adds selectors to a pod stage so that it leaves pods with any of the labels
// alone.
func skipLabelled(stage string, labels ...string) (string, error) {
	const anchor = "    matchExpressions:\n"
	if !strings.Contains(stage, anchor) {
		return "", fmt.Errorf("the pod-complete stage has no matchExpressions to extend")
	}
	skip := anchor
	for _, label := range labels {
		skip += "    - key: '.metadata.labels[\"" + label + "\"]'\n" +
			"      operator: 'DoesNotExist'\n"
	}
	return strings.Replace(stage, anchor, skip, 1), nil
}
