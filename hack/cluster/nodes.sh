#!/usr/bin/env bash
# Prints the fake Nodes (three regions, two zones each) as YAML. kwok keeps
# them Ready; they carry no kwok taint so ordinary workloads land on them.
# Their capacity is far beyond any test's needs (nothing runs in them): make bench
# keeps ten phase-3 ScalingPhases (21 CPUs of requests each) and up to 5,000 app pods
# at once, which 32 CPUs and 250 pods a node could not hold.
set -euo pipefail
i=0
for region in us-east eu-west ap-south; do
  for zone in a b; do
    i=$((i + 1))
    name="ladder-node-$i"
    cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
    topology.kubernetes.io/region: $region
    topology.kubernetes.io/zone: $region-$zone
status:
  allocatable: {cpu: "2000", memory: 16Ti, pods: "2000", ephemeral-storage: 64Ti}
  capacity: {cpu: "2000", memory: 16Ti, pods: "2000", ephemeral-storage: 64Ti}
  nodeInfo:
    architecture: amd64
    kubeProxyVersion: fake
    kubeletVersion: fake
    operatingSystem: linux
YAML
  done
done
