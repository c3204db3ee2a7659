// Package proto holds Culvert's open wire format: the .proto sources under
// culvert/v1, the normative SPEC.md, and the Go code generated from them.
//
// The Go code is generated with Debian's protoc (libprotoc 3.21) and
// protoc-gen-go at the version pinned by the tool directive in go.mod:
//
//	go generate ./proto
package proto

//go:generate protoc -I . --plugin=protoc-gen-go=protoc-gen-go.sh --go_out=. --go_opt=module=github.com/culvert-dev/culvert/proto culvert/v1/record.proto culvert/v1/function.proto
