// Package python holds the Culvert SDK for Python (the culvert package in
// this directory, for Debian's /usr/bin/python3 and python3-protobuf). Its
// Go files run the SDK's Python tests and end-to-end tests under go test, and
// regenerate culvert/v1/*_pb2.py with Debian's protoc:
//
//	go generate ./sdk/python
package python

//go:generate protoc -I ../../proto --python_out=. culvert/v1/record.proto culvert/v1/function.proto
