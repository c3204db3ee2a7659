//go:build !linux

// Command coldstart measures sandbox start times; it needs Linux.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "coldstart: the sandbox benchmark needs Linux")
	os.Exit(1)
}
