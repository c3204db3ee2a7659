package pipelines

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
)

// JSONSchema returns the JSON Schema (draft 2020-12) of pipeline files,
// derived from the types of this package and their tags. schema.json holds
// its output, for editors; go generate ./pipelines rewrites it.
//
// The schema describes the shape of a file. Some checks are the decoder's
// alone: references between sections, unique route names, subject syntax,
// CEL and templates, and the values of environment variables.
func JSONSchema() ([]byte, error) {
	g := &schemaGen{defs: map[string]any{
		"interpolation": obj{
			"description": "A value taken from the environment: ${VAR} or ${VAR:-default}; $$ is a literal $.",
			"type":        "string",
			"pattern":     `\$\{`,
		},
		"Duration": obj{
			"description": "A Go duration with a unit, e.g. 150ms, 2s, 1m30s.",
			"type":        "string",
			"pattern":     `^([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))*$|\$\{`,
		},
		"Chain": obj{
			"description": "Function names, as a list or as a string \"f1 | f2 | f3\".",
			"anyOf": []any{
				obj{"type": "array", "items": obj{"type": "string", "pattern": namePattern + `|\$\{`}},
				obj{"type": "string"},
			},
		},
	}}
	root := g.structSchema(reflect.TypeFor[Pipeline]())
	root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
	root["title"] = "Culvert pipeline"
	root["description"] = "A Culvert pipeline file: inputs, functions, routes and outputs."
	root["$defs"] = g.defs

	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(root); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type obj = map[string]any

const namePattern = "^[A-Za-z0-9_-]+$"

type schemaGen struct {
	defs map[string]any
}

// ref returns a reference to the definition of struct type t, adding it.
func (g *schemaGen) ref(t reflect.Type) obj {
	if _, ok := g.defs[t.Name()]; !ok {
		g.defs[t.Name()] = nil // against recursion
		g.defs[t.Name()] = g.structSchema(t)
	}
	return obj{"$ref": "#/$defs/" + t.Name()}
}

func (g *schemaGen) structSchema(t reflect.Type) obj {
	props := obj{}
	var required []string
	connectors := 0
	for _, f := range fieldsOf(t) {
		s := g.fieldSchema(t.Field(f.index).Type, &f)
		if f.doc != "" {
			s["description"] = f.doc
		}
		props[f.name] = s
		if f.required {
			required = append(required, f.name)
		}
		if f.oneof == "connector" {
			connectors++
		}
	}
	s := obj{"type": "object", "properties": props, "additionalProperties": false}
	if len(required) > 0 {
		s["required"] = required
	}
	if connectors > 0 {
		// Input and Output: exactly one connector.
		s["minProperties"] = 1
		s["maxProperties"] = 1
	}
	return s
}

// fieldSchema is the schema of a value of type t held by field f.
func (g *schemaGen) fieldSchema(t reflect.Type, f *field) obj {
	switch t {
	case reflect.TypeFor[Duration]():
		return obj{"$ref": "#/$defs/Duration"}
	case reflect.TypeFor[Chain]():
		return obj{"$ref": "#/$defs/Chain"}
	case reflect.TypeFor[Sandbox]():
		return obj{"anyOf": []any{obj{"const": "none"}, g.ref(t)}}
	}
	interp := obj{"$ref": "#/$defs/interpolation"}
	switch t.Kind() {
	case reflect.Pointer:
		if f != nil && f.oneof != "" {
			// A connector block may be empty: "stdin:" is null.
			return obj{"anyOf": []any{g.fieldSchema(t.Elem(), f), obj{"type": "null"}}}
		}
		return g.fieldSchema(t.Elem(), f)
	case reflect.Struct:
		return g.ref(t)
	case reflect.Map:
		s := obj{"type": "object"}
		if t.Elem().Kind() == reflect.String {
			s["additionalProperties"] = obj{"type": []any{"string", "number", "boolean", "null"}}
		} else {
			s["additionalProperties"] = g.fieldSchema(t.Elem(), nil)
		}
		if f != nil && f.keys == "name" {
			s["propertyNames"] = obj{"pattern": namePattern}
		}
		if f != nil && f.required {
			s["minProperties"] = 1
		}
		return s
	case reflect.Slice:
		s := obj{"type": "array", "items": g.fieldSchema(t.Elem(), f)}
		if f != nil && f.required {
			s["minItems"] = 1
		}
		return s
	case reflect.Int:
		if f != nil && f.constant != "" {
			n, err := strconv.Atoi(f.constant)
			if err != nil {
				panic("pipelines: bad const tag: " + f.constant)
			}
			return obj{"const": n}
		}
		s := obj{"type": "integer"}
		if f != nil && f.hasMin {
			s["minimum"] = f.min
		}
		return obj{"anyOf": []any{s, interp}}
	case reflect.String:
		switch {
		case f != nil && len(f.enum) > 0:
			return obj{"anyOf": []any{obj{"enum": f.enum}, interp}}
		case f != nil && f.check == "name":
			return obj{"type": "string", "pattern": namePattern + `|\$\{`}
		}
		s := obj{"type": "string"}
		if f != nil && f.required {
			s["minLength"] = 1
		}
		return s
	}
	panic("pipelines: no schema for " + t.String())
}
