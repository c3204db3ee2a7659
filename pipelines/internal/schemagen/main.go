// Command schemagen writes the JSON Schema of pipeline files, derived from
// the Go types of package pipelines. go generate ./pipelines runs it to
// rewrite pipelines/schema.json; TestSchemaUpToDate fails when that file is
// stale.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/culvert-dev/culvert/pipelines"
)

func main() {
	out := flag.String("o", "schema.json", "file to write")
	flag.Parse()
	b, err := pipelines.JSONSchema()
	if err == nil {
		err = os.WriteFile(*out, b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "schemagen:", err)
		os.Exit(1)
	}
}
