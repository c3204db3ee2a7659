package pipelines

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestSchemaUpToDate(t *testing.T) {
	want, err := JSONSchema()
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("schema.json is stale: run go generate ./pipelines")
	}
}

// TestSchemaAgrees validates the test files against schema.json with a small
// validator for the keywords the schema uses: valid files must pass, and
// broken files whose problem is one of shape must fail.
func TestSchemaAgrees(t *testing.T) {
	raw, err := os.ReadFile("schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	v := &schemaValidator{root: schema}

	valid, _ := filepath.Glob("testdata/valid/*.yaml")
	for _, file := range valid {
		doc := loadYAMLValue(t, file)
		if errs := v.validate(schema, doc, ""); len(errs) > 0 {
			t.Errorf("%s does not validate:\n%s", file, strings.Join(errs, "\n"))
		}
	}
	for _, name := range []string{
		"unknown_field", "unknown_top_field", "wrong_type_int", "wrong_type_shapes",
		"bad_enums", "bad_formats", "no_connector", "two_connectors",
		"missing_fields", "missing_top_level", "bad_version", "bad_names",
		"nonpositive_sizes", "duration_no_unit",
	} {
		doc := loadYAMLValue(t, "testdata/broken/"+name+".yaml")
		if errs := v.validate(schema, doc, ""); len(errs) == 0 {
			t.Errorf("testdata/broken/%s.yaml validates against the schema", name)
		}
	}
}

func loadYAMLValue(t *testing.T, file string) any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return doc
}

// schemaValidator implements the JSON Schema keywords JSONSchema emits.
type schemaValidator struct{ root map[string]any }

func (v *schemaValidator) validate(s map[string]any, x any, path string) []string {
	var errs []string
	fail := func(format string, args ...any) {
		errs = append(errs, path+": "+fmt.Sprintf(format, args...))
	}
	for key, arg := range s {
		switch key {
		case "$ref":
			name := strings.TrimPrefix(arg.(string), "#/$defs/")
			def := v.root["$defs"].(map[string]any)[name].(map[string]any)
			errs = append(errs, v.validate(def, x, path)...)
		case "type":
			types, ok := arg.([]any)
			if !ok {
				types = []any{arg}
			}
			if !slices.ContainsFunc(types, func(t any) bool { return hasType(x, t.(string)) }) {
				fail("%v is not of type %v", x, arg)
			}
		case "const":
			if fmt.Sprint(x) != fmt.Sprint(arg) {
				fail("%v is not %v", x, arg)
			}
		case "enum":
			if !slices.ContainsFunc(arg.([]any), func(e any) bool { return e == x }) {
				fail("%v is not one of %v", x, arg)
			}
		case "pattern":
			if str, ok := x.(string); ok && !regexp.MustCompile(arg.(string)).MatchString(str) {
				fail("%q does not match %s", str, arg)
			}
		case "minimum":
			if n, ok := x.(int); ok && float64(n) < arg.(float64) {
				fail("%d < %v", n, arg)
			}
		case "minLength":
			if str, ok := x.(string); ok && float64(len(str)) < arg.(float64) {
				fail("%q is too short", str)
			}
		case "minItems":
			if a, ok := x.([]any); ok && float64(len(a)) < arg.(float64) {
				fail("too few items")
			}
		case "items":
			if a, ok := x.([]any); ok {
				for i, item := range a {
					errs = append(errs, v.validate(arg.(map[string]any), item, fmt.Sprintf("%s[%d]", path, i))...)
				}
			}
		case "minProperties", "maxProperties":
			if m, ok := x.(map[string]any); ok {
				n := float64(len(m))
				if key == "minProperties" && n < arg.(float64) || key == "maxProperties" && n > arg.(float64) {
					fail("%d properties breaks %s %v", len(m), key, arg)
				}
			}
		case "required":
			if m, ok := x.(map[string]any); ok {
				for _, r := range arg.([]any) {
					if _, ok := m[r.(string)]; !ok {
						fail("missing %s", r)
					}
				}
			}
		case "properties":
			m, _ := x.(map[string]any)
			for name, val := range m {
				switch sub, ok := arg.(map[string]any)[name].(map[string]any); {
				case ok:
					errs = append(errs, v.validate(sub, val, path+"."+name)...)
				case s["additionalProperties"] == false:
					fail("unknown property %s", name)
				}
			}
		case "additionalProperties":
			m, _ := x.(map[string]any)
			if sub, ok := arg.(map[string]any); ok && s["properties"] == nil {
				for name, val := range m {
					errs = append(errs, v.validate(sub, val, path+"."+name)...)
				}
			}
		case "propertyNames":
			m, _ := x.(map[string]any)
			for name := range m {
				errs = append(errs, v.validate(arg.(map[string]any), name, path+"."+name)...)
			}
		case "anyOf":
			matched := false
			for _, sub := range arg.([]any) {
				if len(v.validate(sub.(map[string]any), x, path)) == 0 {
					matched = true
				}
			}
			if !matched {
				fail("%v matches no alternative", x)
			}
		case "$schema", "$defs", "title", "description":
		default:
			panic("schema keyword not supported by the test validator: " + key)
		}
	}
	return errs
}

func hasType(x any, t string) bool {
	switch x.(type) {
	case map[string]any:
		return t == "object"
	case []any:
		return t == "array"
	case string:
		return t == "string"
	case int, int64, uint64:
		return t == "integer" || t == "number"
	case float64:
		return t == "number"
	case bool:
		return t == "boolean"
	case nil:
		return t == "null"
	}
	return false
}
