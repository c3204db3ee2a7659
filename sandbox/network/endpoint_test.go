package network

import (
	"strings"
	"testing"

	"github.com/culvert-dev/culvert/sandbox"
)

func TestParseEndpoint(t *testing.T) {
	tests := []struct {
		in      string
		want    sandbox.Endpoint
		wantErr string
	}{
		{in: "10.0.0.0/8:443", want: sandbox.Endpoint{CIDR: "10.0.0.0/8", FromPort: 443, ToPort: 443}},
		{in: "10.0.0.0/8:443-444", want: sandbox.Endpoint{CIDR: "10.0.0.0/8", FromPort: 443, ToPort: 444}},
		{in: "192.0.2.7:53", want: sandbox.Endpoint{CIDR: "192.0.2.7/32", FromPort: 53, ToPort: 53}},
		{in: "0.0.0.0/0:1-65535", want: sandbox.Endpoint{CIDR: "0.0.0.0/0", FromPort: 1, ToPort: 65535}},
		{in: "10.0.0.0/8", wantErr: "want CIDR:PORT"},
		{in: "10.0.0.0/8:", wantErr: "port \"\""},
		{in: "10.0.0.0/8:0", wantErr: "1..65535"},
		{in: "10.0.0.0/8:65536", wantErr: "1..65535"},
		{in: "10.0.0.0/8:444-443", wantErr: "runs backwards"},
		{in: "10.0.0.0/8:1-", wantErr: "port \"\""},
		{in: "10.0.0.0/8:+443", wantErr: "1..65535"},
		{in: "10.1.2.3/8:443", wantErr: "did you mean 10.0.0.0/8"},
		{in: "10.0.0.0/33:443", wantErr: "not a CIDR"},
		{in: "example.com:443", wantErr: "neither a CIDR nor an address"},
		{in: "[2001:db8::]/32:443", wantErr: "not a CIDR"},
		{in: "2001:db8::/32:443", wantErr: "only IPv4"},
		{in: "::1:443", wantErr: "only IPv4"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseEndpoint(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.in) {
					t.Fatalf("err = %v, want one containing %q and the input", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	ok := sandbox.Endpoint{CIDR: "10.0.0.0/8", FromPort: 443, ToPort: 443}
	tests := []struct {
		name    string
		n       sandbox.Network
		wantErr string
	}{
		{"zero is none", sandbox.Network{}, ""},
		{"none", sandbox.Network{Mode: "none"}, ""},
		{"egress", sandbox.Network{Mode: "egress", Allow: []sandbox.Endpoint{ok}, DNS: "10.0.0.53:53"}, ""},
		{"egress without allow", sandbox.Network{Mode: "egress"}, ""},
		{"dns without port", sandbox.Network{Mode: "egress", DNS: "10.0.0.53"}, ""},
		{"unknown mode", sandbox.Network{Mode: "host"}, `network mode "host"`},
		{"none with allow", sandbox.Network{Mode: "none", Allow: []sandbox.Endpoint{ok}}, "need mode \"egress\""},
		{"none with dns", sandbox.Network{DNS: "10.0.0.53:53"}, "need mode \"egress\""},
		{"bad cidr", sandbox.Network{Mode: "egress", Allow: []sandbox.Endpoint{ok, {CIDR: "10.0.0.0", FromPort: 1, ToPort: 1}}}, "allow[1]"},
		{"ipv6 cidr", sandbox.Network{Mode: "egress", Allow: []sandbox.Endpoint{{CIDR: "2001:db8::/32", FromPort: 1, ToPort: 1}}}, "only IPv4"},
		{"zero port", sandbox.Network{Mode: "egress", Allow: []sandbox.Endpoint{{CIDR: "10.0.0.0/8"}}}, "port 0"},
		{"ipv6 dns", sandbox.Network{Mode: "egress", DNS: "[2001:db8::53]:53"}, "only IPv4"},
		{"dns port 0", sandbox.Network{Mode: "egress", DNS: "10.0.0.53:0"}, "port 0"},
		{"dns name", sandbox.Network{Mode: "egress", DNS: "resolver:53"}, "want IPv4:PORT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.n)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

// FuzzParseEndpoint: no input panics; whatever parses validates, and
// formats back to a string that parses to the same endpoint.
func FuzzParseEndpoint(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8:443", "10.0.0.0/8:443-444", "192.0.2.7:53", "0.0.0.0/0:1-65535",
		"10.0.0.0/8:0", "::1:443", "a:b-c", ":", "1.2.3.4/32:65535-65535"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseEndpoint(s)
		if err != nil {
			return
		}
		if err := Validate(sandbox.Network{Mode: ModeEgress, Allow: []sandbox.Endpoint{e}}); err != nil {
			t.Fatalf("ParseEndpoint(%q) = %+v, which does not validate: %v", s, e, err)
		}
		back, err := ParseEndpoint(FormatEndpoint(e))
		if err != nil || back != e {
			t.Fatalf("round trip of %q: %+v -> %q -> %+v, %v", s, e, FormatEndpoint(e), back, err)
		}
	})
}

// FuzzParseResolver: no input panics; a parsed resolver is IPv4 with a
// port.
func FuzzParseResolver(f *testing.F) {
	for _, s := range []string{"10.0.0.53", "10.0.0.53:5353", "[::1]:53", "x:53", "10.0.0.53:0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ap, err := ParseResolver(s)
		if err != nil {
			return
		}
		if !ap.Addr().Is4() || ap.Port() == 0 {
			t.Fatalf("ParseResolver(%q) = %v", s, ap)
		}
	})
}
