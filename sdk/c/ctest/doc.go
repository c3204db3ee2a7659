// Package ctest tests the Culvert SDK for C (sdk/c: culvert.h and
// culvert.c, with no protobuf library) under go test: it builds the SDK
// with gcc and clang, warnings as errors, runs its C test program with and
// without AddressSanitizer and UBSan, runs its libFuzzer target (and the
// same target under Go's fuzzer, in one sanitized process), and sends
// records through the real host to the conformance example. The C sources live in the parent
// directory, which Go cannot hold as a package.
package ctest
