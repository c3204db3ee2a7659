// Package sdk holds the sources of the SDKs for languages other than Go, as
// files that `culvert fn init` copies into a new function: the Python
// package, the Node module with its generated code and pinned dependencies,
// and the C header and source. Tests, examples and node_modules are left
// out. The SDKs themselves live in the subdirectories python, node and c;
// the Go SDK is the Go package sdk/go.
package sdk

import (
	"embed"
	"fmt"
	"io/fs"
)

//go:embed python/culvert/*.py python/culvert/v1/*.py
//go:embed node/culvert.js node/gen node/package.json node/package-lock.json
//go:embed c/culvert.h c/culvert.c
var sources embed.FS

// Sources returns the files of one SDK, rooted at its directory: for
// "python" the package directory culvert/ (with culvert/v1), for "node"
// culvert.js, gen/ and package.json with its lock file, for "c" culvert.h
// and culvert.c.
func Sources(lang string) (fs.FS, error) {
	switch lang {
	case "python", "node", "c":
		return fs.Sub(sources, lang)
	}
	return nil, fmt.Errorf("no embedded SDK for language %q (have python, node, c)", lang)
}
