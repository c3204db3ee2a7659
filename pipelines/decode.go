package pipelines

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

const (
	// maxVisits bounds how many values one file may decode to. Aliases can
	// make a small file expand a lot; no real pipeline comes near this.
	maxVisits = 200_000
	// maxErrors bounds the errors reported for one file.
	maxErrors = 100
)

// YAML short tags, as yaml.Node.ShortTag reports them.
const (
	tagNull  = "!!null"
	tagStr   = "!!str"
	tagInt   = "!!int"
	tagFloat = "!!float"
	tagBool  = "!!bool"
	tagMerge = "!!merge"
)

// decoder walks a YAML node tree into the types of this package, collecting
// every error with its position and path.
type decoder struct {
	file   string
	lines  []string // the source, for positions inside chain strings
	lookup func(string) (string, bool)
	chk    Checker
	errs   Errors
	// pos holds the position of every decoded value by field path, for the
	// checks that run after decoding.
	pos map[string]Pos
	// active holds the anchored nodes being decoded, to catch an alias that
	// refers to a node containing it.
	active map[*yaml.Node]bool
	// bad holds the paths of struct fields that could not be decoded, so
	// that validate does not pile errors on them.
	bad     map[string]bool
	dropped int
	// unknown holds the paths of structs with unknown fields.
	unknown map[string]bool
	visits  int
	// aborted is set when the file is too big to decode further.
	aborted bool
	// fields caches fieldsOf.
	fields map[reflect.Type][]field
}

// ctx is where a value is decoded.
type ctx struct {
	path  string // field path, "" for the file
	at    Pos    // position of the key (map entries, fields) or item
	name  string // the key, for map entries
	field *field // the struct field holding the value, if any
}

// field is a struct field visible in YAML, with its tags.
type field struct {
	index    int
	name     string
	required bool
	enum     []string
	min      int
	hasMin   bool
	keys     string
	check    string
	oneof    string
	constant string
	doc      string
}

// fieldsOf lists the YAML fields of struct type t, in declaration order.
func fieldsOf(t reflect.Type) []field {
	var out []field
	for i := range t.NumField() {
		sf := t.Field(i)
		name, _, _ := strings.Cut(sf.Tag.Get("yaml"), ",")
		if name == "-" || name == "" || !sf.IsExported() {
			continue
		}
		f := field{
			index:    i,
			name:     name,
			required: sf.Tag.Get("required") == "true",
			keys:     sf.Tag.Get("keys"),
			check:    sf.Tag.Get("check"),
			oneof:    sf.Tag.Get("oneof"),
			constant: sf.Tag.Get("const"),
			doc:      sf.Tag.Get("doc"),
		}
		if e := sf.Tag.Get("enum"); e != "" {
			f.enum = strings.Split(e, ",")
		}
		if m := sf.Tag.Get("min"); m != "" {
			n, err := strconv.Atoi(m)
			if err != nil {
				panic(fmt.Sprintf("pipelines: bad min tag on %s.%s: %v", t.Name(), sf.Name, err))
			}
			f.min, f.hasMin = n, true
		}
		out = append(out, f)
	}
	return out
}

// fieldsOf is fieldsOf, cached.
func (d *decoder) fieldsOf(t reflect.Type) []field {
	fs, ok := d.fields[t]
	if !ok {
		fs = fieldsOf(t)
		d.fields[t] = fs
	}
	return fs
}

func fieldNames(fs []field) []string {
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.name
	}
	return names
}

// at is the position of n. yaml.v3 counts lines and columns from 1.
func (d *decoder) at(n *yaml.Node) Pos {
	return Pos{File: d.file, Line: max(n.Line, 1), Column: max(n.Column, 1)}
}

func (d *decoder) errorf(pos Pos, path, format string, args ...any) {
	if len(d.errs) >= 10*maxErrors {
		d.dropped++ // keep enough to sort the first maxErrors
		return
	}
	msg := fmt.Sprintf(format, args...)
	if strings.ContainsAny(msg, "\r\n") { // one error, one line
		msg = strings.NewReplacer("\r", `\r`, "\n", `\n`).Replace(msg)
	}
	d.errs = append(d.errs, &Error{Pos: pos, Path: path, Msg: msg})
}

// result returns the errors sorted, at most maxErrors of them, with a last
// one counting those left out.
func (d *decoder) result() Errors {
	errs := d.errs.sorted()
	more := d.dropped
	if len(errs) > maxErrors {
		more += len(errs) - maxErrors
		errs = errs[:maxErrors]
	}
	if more > 0 {
		last := errs[len(errs)-1]
		errs = append(errs, &Error{Pos: last.Pos, Msg: fmt.Sprintf("too many errors: %d more not shown", more)})
	}
	return errs
}

// posOf returns the recorded position of path, or of its closest recorded
// ancestor.
func (d *decoder) posOf(path string) Pos {
	for {
		if p, ok := d.pos[path]; ok {
			return p
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			if p, ok := d.pos[""]; ok {
				return p
			}
			return Pos{File: d.file, Line: 1, Column: 1}
		}
		path = path[:i]
	}
}

func joinPath(parent, key string) string {
	if !validName(key) {
		key = "[" + strconv.Quote(key) + "]"
		return parent + key
	}
	if parent == "" {
		return key
	}
	return parent + "." + key
}

func indexPath(parent string, i int) string {
	return parent + "[" + strconv.Itoa(i) + "]"
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == tagNull
}

// resolve follows aliases. It returns nil, after reporting it, for an alias
// to a node being decoded.
func (d *decoder) resolve(n *yaml.Node, c ctx) *yaml.Node {
	for n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			d.errorf(d.at(n), c.path, "alias *%s refers to no anchor", n.Value)
			return nil
		}
		if d.active[n.Alias] {
			d.errorf(d.at(n), c.path, "alias *%s refers to a value that contains it", n.Value)
			return nil
		}
		n = n.Alias
	}
	return n
}

// peek follows aliases like resolve, but quietly: it returns nil where
// resolve would report a problem.
func (d *decoder) peek(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode {
		if n.Alias == nil || d.active[n.Alias] {
			return nil
		}
		n = n.Alias
	}
	return n
}

// describe names the kind of a node for "expected X, got Y" messages.
func describe(n *yaml.Node, text, tag string) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.DocumentNode:
		return "a document"
	}
	const maxLen = 40
	if utf8.RuneCountInString(text) > maxLen {
		text = string([]rune(text)[:maxLen]) + "..."
	}
	switch tag {
	case tagStr:
		return "string " + strconv.Quote(text)
	case tagInt:
		return "integer " + text
	case tagFloat:
		return "number " + text
	case tagBool:
		return "boolean " + text
	case tagNull:
		return "null"
	case "!!timestamp":
		return "timestamp " + text
	case "!!binary":
		return "binary data"
	}
	return fmt.Sprintf("%q tagged %s", text, printable(tag))
}

// printable returns s, quoted if it holds control characters, so that every
// error stays on one line.
func printable(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return strconv.Quote(s)
	}
	return s
}

// scalar returns the text of scalar n after interpolation, with its tag; an
// interpolated value is resolved again as if written plain, so that
// "size: ${N}" is an integer. ok is false after an interpolation error.
func (d *decoder) scalar(n *yaml.Node, c ctx) (text, tag string, interp, ok bool) {
	text, tag = n.Value, n.ShortTag()
	if !strings.Contains(text, "$") {
		return text, tag, false, true
	}
	out, subst, err := interpolate(text, d.lookup)
	if err != nil {
		d.errorf(d.at(n), c.path, "%v", err)
		return "", "", false, false
	}
	if subst {
		tag = (&yaml.Node{Kind: yaml.ScalarNode, Value: out}).ShortTag()
	}
	return out, tag, subst, true
}

// value decodes n into v. It reports false when n could not be decoded, so
// that callers do not pile more errors on the same value.
func (d *decoder) value(n *yaml.Node, v reflect.Value, c ctx) bool {
	alias := n
	if n = d.resolve(n, c); n == nil {
		return false
	}
	d.visits++
	if d.visits == maxVisits {
		d.errorf(d.at(n), c.path, "the file expands to more than %d values through aliases; simplify it", maxVisits)
		d.aborted = true
	}
	if d.aborted {
		return false
	}
	if n.Anchor != "" {
		d.active[n] = true
		defer delete(d.active, n)
	}
	if alias != n {
		// Problems with the value as a whole show at the alias; those
		// inside it at the anchored value.
		cp := *n
		cp.Line, cp.Column = alias.Line, alias.Column
		n = &cp
	}
	d.pos[c.path] = d.at(n)
	if v.Kind() == reflect.Pointer {
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		v = v.Elem()
	}
	switch v.Type() {
	case reflect.TypeFor[Duration]():
		return d.duration(n, v, c)
	case reflect.TypeFor[Chain]():
		return d.chain(n, v, c)
	case reflect.TypeFor[Sandbox]():
		return d.sandbox(n, v, c) // `none` or a mapping
	}
	switch v.Kind() {
	case reflect.Struct:
		return d.structure(n, v, c)
	case reflect.Map:
		return d.mapping(n, v, c)
	case reflect.Slice:
		return d.sequence(n, v, c)
	case reflect.String:
		return d.str(n, v, c)
	case reflect.Int:
		return d.integer(n, v, c)
	}
	panic("pipelines: cannot decode into " + v.Type().String())
}

type pair struct{ key, val *yaml.Node }

// pairs lists the entries of mapping n: its own keys, then those brought by
// merge keys (<<: *anchor) that it does not set itself. Duplicate keys are
// reported and skipped.
func (d *decoder) pairs(n *yaml.Node, c ctx) []pair {
	var own, merged []pair
	seen := make(map[string]*yaml.Node)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode && k.Alias != nil && k.Alias.Kind == yaml.ScalarNode {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			d.errorf(d.at(k), c.path, "expected a name as key, got %s", describe(k, "", ""))
			continue
		}
		if k.ShortTag() == tagMerge {
			merged = append(merged, d.merge(v, c)...)
			continue
		}
		if first, ok := seen[k.Value]; ok {
			d.errorf(d.at(k), c.path, "duplicate key %q; first defined at line %d", k.Value, first.Line)
			continue
		}
		seen[k.Value] = k
		own = append(own, pair{k, v})
	}
	for _, p := range merged {
		if _, ok := seen[p.key.Value]; !ok {
			seen[p.key.Value] = p.key
			own = append(own, p)
		}
	}
	return own
}

// merge returns the pairs brought by the value of a merge key: a mapping or
// a list of mappings, the first ones winning.
func (d *decoder) merge(v *yaml.Node, c ctx) []pair {
	if v = d.resolve(v, c); v == nil {
		return nil
	}
	switch v.Kind {
	case yaml.MappingNode:
		if d.active[v] {
			d.errorf(d.at(v), c.path, "merge key << refers to a mapping that contains it")
			return nil
		}
		d.active[v] = true
		defer delete(d.active, v)
		return d.pairs(v, c)
	case yaml.SequenceNode:
		var out []pair
		for _, item := range v.Content {
			if r := d.peek(item); r != nil && r.Kind != yaml.MappingNode {
				d.errorf(d.at(item), c.path, "merge key << takes mappings, got %s", describe(r, r.Value, r.ShortTag()))
				continue
			}
			out = append(out, d.merge(item, c)...)
		}
		return out
	}
	d.errorf(d.at(v), c.path, "merge key << takes a mapping or a list of mappings, got %s", describe(v, v.Value, v.ShortTag()))
	return nil
}

// structure fills the Pos and Name fields not decoded from YAML, decodes a
// mapping into the other fields of a struct, then checks required fields.
func (d *decoder) structure(n *yaml.Node, v reflect.Value, c ctx) bool {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		if sf.Tag.Get("yaml") != "-" {
			continue
		}
		switch {
		case sf.Name == "Pos" && sf.Type == reflect.TypeFor[Pos]():
			v.Field(i).Set(reflect.ValueOf(c.at))
		case sf.Name == "Name" && sf.Type.Kind() == reflect.String && c.name != "":
			v.Field(i).SetString(c.name)
		}
	}
	var ps []pair
	switch {
	case isNull(n):
	case n.Kind == yaml.MappingNode:
		ps = d.pairs(n, c)
	default:
		if c.path == "" {
			d.errorf(d.at(n), c.path, "expected a mapping with version, name, inputs, routes and outputs, got %s", describe(n, n.Value, n.ShortTag()))
		} else {
			d.errorf(d.at(n), c.path, "expected a mapping, got %s", describe(n, n.Value, n.ShortTag()))
		}
		return false
	}
	fs := d.fieldsOf(t)
	byName := make(map[string]*field, len(fs))
	for i := range fs {
		byName[fs[i].name] = &fs[i]
	}
	present := make(map[string]bool)
	ok := make(map[string]bool)
	for _, p := range ps {
		f := byName[p.key.Value]
		if f == nil {
			// A misspelt field is reported once, not also as missing.
			present[d.unknownField(p.key, fieldNames(fs), c.path)] = true
			d.unknown[c.path] = true
			continue
		}
		val := p.val
		if r := d.peek(val); r != nil && isNull(r) && v.Field(f.index).Kind() != reflect.Pointer {
			continue // null: not set
		}
		present[f.name] = true
		fp := joinPath(c.path, f.name)
		ok[f.name] = d.value(val, v.Field(f.index), ctx{path: fp, at: d.at(p.key), field: f})
		if !ok[f.name] {
			d.bad[fp] = true
		}
	}
	for _, f := range fs {
		if !f.required {
			continue
		}
		if !present[f.name] {
			d.errorf(c.at, c.path, "missing required field %q", f.name)
			continue
		}
		fv := v.Field(f.index)
		switch fv.Kind() {
		case reflect.String, reflect.Slice, reflect.Map:
			if ok[f.name] && fv.Len() == 0 {
				fp := joinPath(c.path, f.name)
				d.errorf(d.posOf(fp), fp, "must not be empty")
			}
		}
	}
	return true
}

// unknownField reports key, suggesting the closest known field, which it
// returns.
func (d *decoder) unknownField(key *yaml.Node, known []string, path string) string {
	msg := fmt.Sprintf("unknown field %q", key.Value)
	s := suggest(key.Value, known)
	if s != "" {
		msg += "; did you mean " + s + "?"
	} else {
		msg += "; expected one of " + strings.Join(known, ", ")
	}
	d.errorf(d.at(key), path, "%s", msg)
	return s
}

// mapping decodes a mapping with string keys into a map.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, c ctx) bool {
	if isNull(n) {
		return true
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(d.at(n), c.path, "expected a mapping, got %s", describe(n, n.Value, n.ShortTag()))
		return false
	}
	t := v.Type()
	m := reflect.MakeMap(t)
	for _, p := range d.pairs(n, c) {
		key := p.key.Value
		if c.field != nil {
			d.checkKey(p.key, key, c)
		}
		elem := reflect.New(t.Elem()).Elem()
		kc := ctx{path: joinPath(c.path, key), at: d.at(p.key), name: key}
		if t.Elem().Kind() == reflect.String {
			if r := d.peek(p.val); r != nil && isNull(r) {
				d.pos[kc.path] = d.at(r)
				m.SetMapIndex(reflect.ValueOf(key), elem) // "KEY:" is an empty value
				continue
			}
		}
		if !d.value(p.val, elem, kc) {
			d.bad[kc.path] = true
		}
		m.SetMapIndex(reflect.ValueOf(key), elem)
	}
	v.Set(m)
	return true
}

// checkKey checks a map key against the keys tag of its map field.
func (d *decoder) checkKey(k *yaml.Node, key string, c ctx) {
	switch c.field.keys {
	case "name":
		if !validName(key) {
			d.errorf(d.at(k), c.path, "invalid name %q: use only letters, digits, '_' and '-'", key)
		}
	case "env":
		if key == "" || strings.ContainsAny(key, "=\x00") {
			d.errorf(d.at(k), c.path, "invalid environment variable name %q: it must be non-empty, without '=' or NUL", key)
		}
		// These make the culvert binary, started as a sandbox's shim, init
		// or launcher, run its set-up code (sandbox/container's spawner,
		// libcontainer's nsenter): a function must not be given them.
		for _, prefix := range []string{"_CULVERT_", "_LIBCONTAINER_"} {
			if strings.HasPrefix(key, prefix) {
				d.errorf(d.at(k), c.path, "environment variable %q is reserved: names starting with %s start the sandbox's own set-up code", key, prefix)
			}
		}
	case "header":
		if key == "" || strings.ContainsFunc(key, func(r rune) bool { return r == ':' || r <= ' ' || r == 0x7f }) {
			d.errorf(d.at(k), c.path, "invalid header name %q: it must be non-empty, without ':', spaces or control characters", key)
		}
	}
}

// sequence decodes a list into a slice.
func (d *decoder) sequence(n *yaml.Node, v reflect.Value, c ctx) bool {
	if isNull(n) {
		return true
	}
	if n.Kind != yaml.SequenceNode {
		d.errorf(d.at(n), c.path, "expected a list, got %s", describe(n, n.Value, n.ShortTag()))
		return false
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		ic := ctx{path: indexPath(c.path, i), at: d.at(item), field: c.field}
		if r := d.peek(item); r != nil && isNull(r) && v.Type().Elem().Kind() == reflect.String {
			d.errorf(d.at(r), ic.path, "expected a string, got null")
			continue
		}
		if !d.value(item, s.Index(i), ic) {
			d.bad[ic.path] = true
		}
	}
	v.Set(s)
	return true
}

// str decodes any scalar into a string, then checks it against the enum
// and check tags of its field.
func (d *decoder) str(n *yaml.Node, v reflect.Value, c ctx) bool {
	if n.Kind != yaml.ScalarNode {
		d.errorf(d.at(n), c.path, "expected a string, got %s", describe(n, "", ""))
		return false
	}
	text, _, interp, ok := d.scalar(n, c)
	if !ok {
		return false
	}
	if !interp && isNull(n) {
		return true
	}
	v.SetString(text)
	if text == "" || c.field == nil {
		return true
	}
	if f := c.field; len(f.enum) > 0 && !contains(f.enum, text) {
		msg := fmt.Sprintf("invalid %s %q: must be one of %s", f.name, text, strings.Join(f.enum, ", "))
		if s := suggest(text, f.enum); s != "" {
			msg += " (did you mean " + s + "?)"
		}
		d.errorf(d.at(n), c.path, "%s", msg)
		return false
	}
	if msg, off := d.check(c.field, text); msg != "" {
		pos := d.at(n)
		if off >= 0 && text == n.Value {
			pos = d.inside(n, off)
		}
		d.errorf(pos, c.path, "%s", msg)
		return false
	}
	return true
}

// integer decodes an integer scalar and checks its min tag.
func (d *decoder) integer(n *yaml.Node, v reflect.Value, c ctx) bool {
	if n.Kind != yaml.ScalarNode {
		d.errorf(d.at(n), c.path, "expected an integer, got %s", describe(n, "", ""))
		return false
	}
	text, tag, interp, ok := d.scalar(n, c)
	if !ok || interp && text == "" || !interp && tag == tagNull {
		return ok
	}
	if tag != tagInt {
		d.errorf(d.at(n), c.path, "expected an integer, got %s%s", describe(n, text, tag), from(n, interp))
		return false
	}
	var i int64
	if err := (&yaml.Node{Kind: yaml.ScalarNode, Tag: tagInt, Value: text}).Decode(&i); err != nil || int64(int(i)) != i {
		d.errorf(d.at(n), c.path, "integer %s is out of range%s", text, from(n, interp))
		return false
	}
	if f := c.field; f != nil && f.hasMin && i < int64(f.min) {
		d.errorf(d.at(n), c.path, "must be at least %d, got %d%s", f.min, i, from(n, interp))
		return false
	}
	v.SetInt(i)
	return true
}

// from names the source of an interpolated value in messages.
func from(n *yaml.Node, interp bool) string {
	if !interp {
		return ""
	}
	return " (from " + printable(n.Value) + ")"
}

// duration decodes a positive Go duration such as 150ms.
func (d *decoder) duration(n *yaml.Node, v reflect.Value, c ctx) bool {
	if n.Kind != yaml.ScalarNode {
		d.errorf(d.at(n), c.path, "expected a duration such as 150ms, got %s", describe(n, "", ""))
		return false
	}
	text, tag, interp, ok := d.scalar(n, c)
	if !ok || interp && text == "" || !interp && tag == tagNull {
		return ok
	}
	switch tag {
	case tagInt, tagFloat:
		d.errorf(d.at(n), c.path, "duration %s has no unit; add a unit, e.g. 150ms or 2s%s", text, from(n, interp))
		return false
	case tagStr:
	default:
		d.errorf(d.at(n), c.path, "expected a duration such as 150ms, got %s%s", describe(n, text, tag), from(n, interp))
		return false
	}
	dur, err := time.ParseDuration(text)
	if err != nil {
		d.errorf(d.at(n), c.path, "invalid duration %q: write a number with a unit (ns, us, ms, s, m, h), e.g. 150ms or 1m30s%s", text, from(n, interp))
		return false
	}
	if dur <= 0 {
		d.errorf(d.at(n), c.path, "must be positive, got %s%s", text, from(n, interp))
		return false
	}
	v.SetInt(int64(dur))
	return true
}

// chain decodes a list of function names or a string "f1 | f2 | f3".
func (d *decoder) chain(n *yaml.Node, v reflect.Value, c ctx) bool {
	switch {
	case isNull(n):
		return true
	case n.Kind == yaml.SequenceNode:
		return d.sequence(n, v, c)
	case n.Kind != yaml.ScalarNode:
		d.errorf(d.at(n), c.path, "expected a list of function names or a string \"f1 | f2\", got %s", describe(n, "", ""))
		return false
	}
	text, _, _, ok := d.scalar(n, c)
	if !ok {
		return false
	}
	if strings.TrimSpace(text) == "" {
		return true
	}
	var names Chain
	good := true
	start := 0
	for i, part := range strings.Split(text, "|") {
		name := strings.TrimSpace(part)
		lead := len(part) - len(strings.TrimLeft(part, " \t"))
		pos := d.at(n)
		if text == n.Value {
			pos = d.inside(n, start+lead)
		}
		p := indexPath(c.path, i)
		d.pos[p] = pos
		if name == "" {
			d.errorf(pos, p, "empty function name in chain %q", text)
			good = false
		}
		names = append(names, name)
		start += len(part) + 1
	}
	if good {
		v.Set(reflect.ValueOf(names))
	}
	return good
}

// inside returns the position of byte offset off of the value of scalar n,
// when the value stands verbatim on one line of the source; otherwise the
// position of n.
func (d *decoder) inside(n *yaml.Node, off int) Pos {
	pos := d.at(n)
	if n.Line < 1 || n.Line > len(d.lines) || n.Column < 1 || off > len(n.Value) || strings.Contains(n.Value, "\n") {
		return pos
	}
	line := []rune(strings.TrimSuffix(d.lines[n.Line-1], "\r"))
	if n.Column-1 > len(line) {
		return pos
	}
	rest := string(line[n.Column-1:])
	quote := 0
	if n.Style != 0 && rest == "" {
		return pos
	}
	switch n.Style {
	case yaml.DoubleQuotedStyle, yaml.SingleQuotedStyle:
		quote = 1
	case 0:
	default:
		return pos
	}
	if !strings.HasPrefix(rest[quote:], n.Value) {
		return pos
	}
	pos.Column += quote + utf8.RuneCountInString(n.Value[:off])
	return pos
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
