// Package proto holds Culvert's open wire format: the .proto sources under
// culvert/v1, the normative SPEC.md, and the Go code generated from them.
//
// The Go code is generated with Debian's protoc (libprotoc 3.21),
// protoc-gen-go and protoc-gen-go-vtproto (fast MarshalVT, SizeVT,
// UnmarshalVT and UnmarshalVTUnsafe methods, *_vtproto.pb.go) at the
// versions pinned by the tool directives in go.mod:
//
//	go generate ./proto
package proto

//go:generate protoc -I . --plugin=protoc-gen-go=protoc-gen-go.sh --go_out=. --go_opt=module=github.com/culvert-dev/culvert/proto --plugin=protoc-gen-go-vtproto=protoc-gen-go-vtproto.sh --go-vtproto_out=. --go-vtproto_opt=module=github.com/culvert-dev/culvert/proto,features=marshal+unmarshal+size+unmarshal_unsafe culvert/v1/record.proto culvert/v1/function.proto
