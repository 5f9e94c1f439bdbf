#!/usr/bin/env bash
# Prints the fake Nodes (three regions, two zones each) as YAML. kwok keeps
# them Ready; they carry no kwok taint so ordinary workloads land on them.
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
  allocatable: {cpu: "32", memory: 256Gi, pods: "250", ephemeral-storage: 1Ti}
  capacity: {cpu: "32", memory: 256Gi, pods: "250", ephemeral-storage: 1Ti}
  nodeInfo:
    architecture: amd64
    kubeProxyVersion: fake
    kubeletVersion: fake
    operatingSystem: linux
YAML
  done
done
