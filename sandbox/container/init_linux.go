//go:build linux

package container

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"
)

// Init is the Go half of the container init. A program that uses this
// runtime calls it from an init function, before anything else:
//
//	func init() { container.Init() }
//
// When the program was started as a container init (os.Args[1] is
// "init" and libcontainer's nsenter has run), Init sets up the container
// and execs the function; it never returns. Otherwise it returns at once.
func Init() {
	if len(os.Args) > 1 && os.Args[1] == "init" && os.Getenv("_LIBCONTAINER_INITPIPE") != "" {
		libcontainer.Init()
	}
}
