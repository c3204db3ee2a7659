// Package node holds the Culvert SDK for Node.js (culvert.js, on
// @bufbuild/protobuf). Its Go files run the SDK's node --test suite and
// end-to-end tests under go test, and regenerate gen/culvert/v1 with
// Debian's protoc and the protoc-gen-es pinned in package-lock.json:
//
//	go generate ./sdk/node
package node

//go:generate protoc -I ../../proto --plugin=protoc-gen-es=node_modules/.bin/protoc-gen-es --es_out=gen --es_opt=target=js+dts,import_extension=js culvert/v1/record.proto culvert/v1/function.proto
