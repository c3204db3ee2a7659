//go:build linux && cgo

package spawn

// The shim and the init are in spawn.c; this file only links it in.

// #cgo CFLAGS: -O2 -Wall
import "C"
