package deps

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

func TestShebang(t *testing.T) {
	tests := []struct {
		line, interp, arg string
		bad               bool
	}{
		{line: "#!/bin/sh\n", interp: "/bin/sh"},
		{line: "#! /bin/sh -e\n", interp: "/bin/sh", arg: "-e"},
		{line: "#!/usr/bin/env python3\n", interp: "/usr/bin/env", arg: "python3"},
		{line: "#!/bin/sh\t-x  y \r\n", interp: "/bin/sh", arg: "-x  y"},
		{line: "#!sh\n", bad: true},
		{line: "#!\n", bad: true},
		{line: "no shebang", bad: true},
	}
	for _, tt := range tests {
		interp, arg, err := Shebang(tt.line)
		if tt.bad {
			if err == nil {
				t.Errorf("Shebang(%q) = %q, %q; want an error", tt.line, interp, arg)
			}
			continue
		}
		if err != nil || interp != tt.interp || arg != tt.arg {
			t.Errorf("Shebang(%q) = %q, %q, %v; want %q, %q", tt.line, interp, arg, err, tt.interp, tt.arg)
		}
	}
}

func TestParseLdSoConf(t *testing.T) {
	dirs, inc := ParseLdSoConf([]byte("# comment\ninclude /etc/ld.so.conf.d/*.conf\n/usr/local/lib\nrelative\n/opt/a:/opt/b # trailing\nhwcap 0 x\n"))
	if want := []string{"/usr/local/lib", "/opt/a", "/opt/b"}; !slices.Equal(dirs, want) {
		t.Errorf("dirs = %q, want %q", dirs, want)
	}
	if want := []string{"/etc/ld.so.conf.d/*.conf"}; !slices.Equal(inc, want) {
		t.Errorf("includes = %q, want %q", inc, want)
	}
}

// TestClosureDynamic resolves a real dynamically linked program: the
// closure holds the program, its ELF interpreter and libc.
func TestClosureDynamic(t *testing.T) {
	sh, err := exec.LookPath("sed")
	if err != nil {
		t.Skip("no sed on this host")
	}
	var r Resolver
	got, err := r.Closure(sh)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(got, sh) {
		t.Errorf("closure %q lacks the program itself", got)
	}
	var libc, interp bool
	for _, p := range got {
		switch filepath.Base(p) {
		case "libc.so.6":
			libc = true
		case "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1":
			interp = true
		}
	}
	if !libc || !interp {
		t.Errorf("closure %q lacks libc or the ELF interpreter", got)
	}
}

// TestClosureScript follows a shebang to its interpreter, and "env NAME"
// to NAME on PATH.
func TestClosureScript(t *testing.T) {
	dir := t.TempDir()
	sh := "/bin/sh"
	if _, err := os.Stat(sh); err != nil {
		t.Skip("no /bin/sh")
	}
	script := filepath.Join(dir, "s")
	if err := os.WriteFile(script, []byte("#!/usr/bin/env sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := Resolver{PathDirs: []string{"/bin"}}
	got, err := r.Closure(script)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{script, "/usr/bin/env", "/bin/sh"} {
		if !slices.Contains(got, want) {
			t.Errorf("closure %q lacks %s", got, want)
		}
	}
}

func TestClosureErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("#!/usr/bin/env no-such-interpreter-xyz\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	var r Resolver
	for _, p := range []string{bad, filepath.Join(dir, "missing"), "relative"} {
		if got, err := r.Closure(p); err == nil {
			t.Errorf("Closure(%s) = %q; want an error", p, got)
		}
	}
}

func FuzzShebang(f *testing.F) {
	f.Add("#!/bin/sh -e\n")
	f.Add("#!/usr/bin/env  python3 -u\r\n")
	f.Fuzz(func(t *testing.T, line string) {
		interp, _, err := Shebang(line)
		if err == nil && !filepath.IsAbs(interp) {
			t.Fatalf("Shebang(%q) returned a relative interpreter %q", line, interp)
		}
	})
}

func FuzzParseLdSoConf(f *testing.F) {
	f.Add([]byte("include ld.so.conf.d/*.conf\n/usr/local/lib\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		dirs, _ := ParseLdSoConf(b)
		for _, d := range dirs {
			if !filepath.IsAbs(d) {
				t.Fatalf("relative dir %q", d)
			}
		}
	})
}
