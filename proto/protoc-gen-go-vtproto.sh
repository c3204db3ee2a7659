#!/bin/sh
# protoc plugin shim: runs protoc-gen-go-vtproto at the version pinned in go.mod.
exec go tool protoc-gen-go-vtproto "$@"
