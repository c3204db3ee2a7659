// Package deploy holds Culvert's deployment assets: the container image
// (Dockerfile) and the Kubernetes manifests (kubernetes/, a kustomize
// tree), together with the checks in its tests that keep them consistent
// with each other and with the pipeline format. It has no code of its own.
//
// See README.md in this directory.
package deploy
