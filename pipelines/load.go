package pipelines

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Load reads, decodes, validates and completes with defaults the pipeline
// file at path. lookupEnv resolves ${VAR} in values; nil means os.LookupEnv.
// Checks that need the router (CEL, subject templates) are skipped; see
// LoadWith.
//
// The error is Errors, listing every problem in the file, or the error of
// reading the file.
func Load(path string, lookupEnv func(string) (string, bool)) (*Pipeline, error) {
	return LoadWith(path, lookupEnv, Checker{})
}

// LoadWith is Load with the checks of chk.
func LoadWith(path string, lookupEnv func(string) (string, bool), chk Checker) (*Pipeline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load pipeline: %w", err)
	}
	return ParseWith(path, data, lookupEnv, chk)
}

// Parse decodes, validates and completes with defaults the pipeline in data.
// file names it in errors and positions, and its directory becomes
// Function.Dir; it may be empty. lookupEnv resolves ${VAR}; nil means
// os.LookupEnv. Checks that need the router are skipped; see ParseWith.
//
// The error, if any, is Errors. On error the pipeline is nil.
func Parse(file string, data []byte, lookupEnv func(string) (string, bool)) (*Pipeline, error) {
	return ParseWith(file, data, lookupEnv, Checker{})
}

// ParseWith is Parse with the checks of chk.
func ParseWith(file string, data []byte, lookupEnv func(string) (string, bool), chk Checker) (*Pipeline, error) {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	root, errs := parseYAML(file, data)
	if errs != nil {
		return nil, errs
	}
	d := &decoder{
		file:    file,
		lines:   strings.Split(string(data), "\n"),
		lookup:  lookupEnv,
		chk:     chk,
		pos:     make(map[string]Pos),
		active:  make(map[*yaml.Node]bool),
		bad:     make(map[string]bool),
		unknown: make(map[string]bool),
		fields:  make(map[reflect.Type][]field),
	}
	var p Pipeline
	d.value(root, reflect.ValueOf(&p).Elem(), ctx{at: d.at(root)})
	d.validate(&p)
	if len(d.errs) > 0 {
		return nil, d.result()
	}
	p.File = file
	dir := ""
	if file != "" {
		dir = filepath.Dir(file)
		if abs, err := filepath.Abs(dir); err == nil {
			dir = abs
		}
	}
	for _, f := range p.Functions {
		f.Dir = dir
	}
	applyDefaults(&p)
	return &p, nil
}

// parseYAML parses data into a node tree and returns the root value of its
// single document.
func parseYAML(file string, data []byte) (root *yaml.Node, errs Errors) {
	fail := func(line int, format string, args ...any) (*yaml.Node, Errors) {
		return nil, Errors{{Pos: Pos{File: file, Line: max(line, 1), Column: 1}, Msg: fmt.Sprintf(format, args...)}}
	}
	defer func() {
		// yaml.v3 panics on some malformed input instead of failing.
		if r := recover(); r != nil {
			root, errs = fail(1, "invalid YAML: %v", r)
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return fail(1, "the file is empty; a pipeline needs version, name, inputs, routes and outputs")
		}
		return syntaxError(file, err)
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		return nil, Errors{{Pos: Pos{File: file, Line: max(extra.Line, 1), Column: max(extra.Column, 1)},
			Msg: "a pipeline file holds one YAML document; remove this one or move it to its own file"}}
	case !errors.Is(err, io.EOF):
		return syntaxError(file, err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return fail(1, "the file is empty; a pipeline needs version, name, inputs, routes and outputs")
	}
	return doc.Content[0], nil
}

// syntaxError turns a yaml.v3 parse error ("yaml: line 3: mapping values are
// not allowed in this context") into Errors. yaml.v3 gives no column.
func syntaxError(file string, err error) (*yaml.Node, Errors) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if m := regexp.MustCompile(`^line (\d+): `).FindStringSubmatch(msg); m != nil {
		if n, err := strconv.Atoi(m[1]); err == nil && n > 0 {
			line = n
		}
		msg = msg[len(m[0]):]
	}
	return nil, Errors{{Pos: Pos{File: file, Line: line, Column: 1}, Msg: "invalid YAML: " + msg}}
}
