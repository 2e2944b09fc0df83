// Command stages prints the KWOK stage configuration the test cluster runs with: KWOK's own
// "fast" node and pod stages (nodes become Ready and keep a Lease; scheduled pods become
// Running and Ready; pods of Jobs complete; deleted pods go away). They are read from the
// KWOK module itself so they always match the KWOK binary that is built beside them.
package main

import (
	"fmt"
	"strings"

	nodefast "sigs.k8s.io/kwok/kustomize/stage/node/fast"
	nodelease "sigs.k8s.io/kwok/kustomize/stage/node/heartbeat-with-lease"
	podfast "sigs.k8s.io/kwok/kustomize/stage/pod/fast"
)

func main() {
	stages := []string{
		nodefast.DefaultNodeInit,
		nodelease.DefaultNodeHeartbeatWithLease,
		podfast.DefaultPodReady,
		podfast.DefaultPodComplete,
		podfast.DefaultPodDelete,
	}
	for i, s := range stages {
		stages[i] = strings.TrimSpace(s)
	}
	fmt.Println(strings.Join(stages, "\n---\n"))
}
