//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package culvert

import "os"

// takeStdio cannot move the descriptors on this system: it keeps stdin and
// stdout for the protocol and only points os.Stdout at stderr, which
// protects prints from Go code but not from children or C libraries.
func takeStdio() (in, out *os.File, err error) {
	in, out = os.Stdin, os.Stdout
	os.Stdout = os.Stderr
	return in, out, nil
}
