package rendezvous

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/mpspawn/mpspawn/internal/slurmtest"
)

// hostlistVector is one entry of testdata/hostlist.json, written by
// scripts/hostlist-vectors.py from `scontrol show hostnames`.
type hostlistVector struct {
	List     string   `json:"list"`
	Hosts    []string `json:"hosts"`
	Invalid  bool     `json:"invalid"`
	Diverges string   `json:"diverges"`
}

func loadHostlistVectors(t testing.TB) []hostlistVector {
	t.Helper()
	data, err := os.ReadFile("testdata/hostlist.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []hostlistVector
	if err := json.Unmarshal(data, &vs); err != nil {
		t.Fatalf("testdata/hostlist.json: %v", err)
	}
	if len(vs) < 30 {
		t.Fatalf("testdata/hostlist.json has %d vectors; want at least 30", len(vs))
	}
	return vs
}

// checkAgainstSlurm checks ExpandHostlist(list) against what Slurm made of
// it: the same names, or an error where Slurm said "Invalid hostlist", or
// an error that says Slurm accepts the list where diverges (and only then).
func checkAgainstSlurm(t *testing.T, list string, hosts []string, invalid, diverges bool) {
	t.Helper()
	got, err := ExpandHostlist(list)
	var he *HostlistError
	if err != nil && !errors.As(err, &he) {
		t.Fatalf("ExpandHostlist(%q) error %T %v; want a *HostlistError", list, err, err)
	}
	switch {
	case invalid:
		if err == nil || he.SlurmAccepts {
			t.Errorf("ExpandHostlist(%q) = %q, %v; want an error Slurm reports too (scontrol: Invalid hostlist)", list, got, err)
		}
	case diverges:
		if err == nil || !he.SlurmAccepts {
			t.Errorf("ExpandHostlist(%q) = %q, %v; want an error with SlurmAccepts (Slurm gives %q)", list, got, err, hosts)
		}
	case err != nil:
		t.Errorf("ExpandHostlist(%q) error %v; want %q (scontrol show hostnames)", list, err, hosts)
	case !slices.Equal(got, hosts):
		t.Errorf("ExpandHostlist(%q) = %q; want %q (scontrol show hostnames)", list, got, hosts)
	}
}

func TestExpandHostlistTable(t *testing.T) {
	for _, v := range loadHostlistVectors(t) {
		t.Run(v.List, func(t *testing.T) {
			checkAgainstSlurm(t, v.List, v.Hosts, v.Invalid, v.Diverges != "")
		})
	}
}

func TestExpandHostlistErrors(t *testing.T) {
	tests := []struct{ list, msg string }{
		{"x[1-3]y", `rendezvous: hostlist "x[1-3]y": has text after its last ']' in "x[1-3]y"`},
		{"n[3-1]", `rendezvous: hostlist "n[3-1]": has a range that runs backwards (N > M): "3-1"`},
		{"n[]", `rendezvous: hostlist "n[]": is not a number or range N-M: ""`},
		{"n[a-c]", `rendezvous: hostlist "n[a-c]": is not a number or range N-M: "a-c"`},
		{"n[1--3]", `rendezvous: hostlist "n[1--3]": has a negative number in range "1--3"`},
		{"n[0-65536]", `rendezvous: hostlist "n[0-65536]": has more than 65536 hosts in range "0-65536"`},
		{"a\x00b", `rendezvous: hostlist "a\x00b": contains a NUL byte: "a\x00b"`},
		{"a[0-65535]b[0-65535]", `rendezvous: hostlist "a[0-65535]b[0-65535]": expands to more than 1048576 hosts: "a[0-65535]b[0-65535]"`},
	}
	for _, tt := range tests {
		got, err := ExpandHostlist(tt.list)
		if err == nil || err.Error() != tt.msg {
			t.Errorf("ExpandHostlist(%q) = %q, %v; want error %s", tt.list, got, err, tt.msg)
		}
	}
}

// TestExpandHostlistLimits checks Slurm's bounds, which the table holds no
// vector for (their output is 65536 lines): 65536 hosts in a range, and as
// many prefixes from an earlier group, are accepted; one more is not.
func TestExpandHostlistLimits(t *testing.T) {
	for _, tt := range []struct {
		list        string
		n           int
		first, last string
	}{
		{"n[0-65535]", 65536, "n0", "n65535"},
		{"a[0-65535]b[1]", 65536, "a0b1", "a65535b1"},
		{"a[0-65535]b[1-16]", MaxHosts, "a0b1", "a65535b16"},
	} {
		got, err := ExpandHostlist(tt.list)
		if err != nil || len(got) != tt.n || got[0] != tt.first || got[len(got)-1] != tt.last {
			t.Errorf("ExpandHostlist(%q) = %d hosts (%v); want %d from %s to %s", tt.list, len(got), err, tt.n, tt.first, tt.last)
		}
	}
	for _, list := range []string{"a[0-65536]b[1]", "a[0-40000,0-40000]b[1]", "a[0-65535]b[1-17]"} {
		if got, err := ExpandHostlist(list); err == nil {
			t.Errorf("ExpandHostlist(%q) = %d hosts; want an error", list, len(got))
		}
	}
}

// TestExpandHostlistScontrol re-checks the table against the scontrol on
// this machine (a newer Slurm that expands differently shows here), then
// checks ExpandHostlist against scontrol on random lists.
func TestExpandHostlistScontrol(t *testing.T) {
	slurmtest.Require(t, "scontrol")
	conf := slurmtest.ClientConf(t)
	ctx := context.Background()
	for _, v := range loadHostlistVectors(t) {
		hosts, invalid, err := slurmtest.Hostnames(ctx, conf, v.List)
		if err != nil {
			t.Fatal(err)
		}
		if invalid != v.Invalid || !slices.Equal(hosts, v.Hosts) {
			t.Errorf("scontrol show hostnames %q = %q (invalid %v); testdata has %q (invalid %v): regenerate with scripts/hostlist-vectors.py",
				v.List, hosts, invalid, v.Hosts, v.Invalid)
		}
	}
	rng := rand.New(rand.NewPCG(14, 1))
	for range 150 {
		list := randomHostlist(rng)
		hosts, invalid, err := slurmtest.Hostnames(ctx, conf, list)
		if err != nil {
			t.Fatal(err)
		}
		// Slurm's silent drops: accepted, but not what was written.
		var he *HostlistError
		_, mine := ExpandHostlist(list)
		diverges := errors.As(mine, &he) && he.SlurmAccepts && !invalid
		if diverges && !slurmDrops(list) {
			t.Errorf("ExpandHostlist(%q) = %v; Slurm gives %q and the list has no number of 2^64 or more nor a bad early group", list, mine, hosts)
			continue
		}
		checkAgainstSlurm(t, list, hosts, invalid, diverges)
	}
}

// slurmDrops says whether list has what makes Slurm accept a list but
// mangle it: a number of 20 digits or more, or a group before the last two.
func slurmDrops(list string) bool {
	digits := 0
	for _, r := range list {
		if r >= '0' && r <= '9' {
			if digits++; digits >= 20 {
				return true
			}
		} else {
			digits = 0
		}
	}
	return strings.Count(list, "[") >= 3
}

// randomHostlist makes a node list from the pieces Slurm's syntax is made
// of, mostly valid, sometimes not.
func randomHostlist(rng *rand.Rand) string {
	pick := func(s ...string) string { return s[rng.IntN(len(s))] }
	num := func() string {
		return pick("0", "1", "2", "3", "7", "9", "01", "02", "09", "10", "99", "100", "001", "011")
	}
	rangeList := func() string {
		var parts []string
		for range 1 + rng.IntN(3) {
			switch rng.IntN(10) {
			case 0:
				parts = append(parts, pick("", "a", "1-", "-1", "1-2-3", " 1", "+2", "1x2", "3-1", "1--2"))
			case 1, 2, 3:
				parts = append(parts, num())
			default:
				parts = append(parts, num()+"-"+num())
			}
		}
		return strings.Join(parts, ",")
	}
	var items []string
	for range 1 + rng.IntN(3) {
		var b strings.Builder
		b.WriteString(pick("n", "node", "rack", "gpu-", "a", "", "x1-"))
		for g := rng.IntN(4); g > 0; g-- {
			b.WriteString("[" + rangeList() + "]")
			if g > 1 {
				b.WriteString(pick("", "-n", "c", "_"))
			}
		}
		if rng.IntN(8) == 0 {
			b.WriteString(pick("y", "]", "[", "[1", ";"))
		}
		if rng.IntN(4) == 0 {
			b.WriteString(num())
		}
		items = append(items, b.String())
	}
	return strings.Join(items, pick(",", " ", "\t", ",,", ", "))
}

// FuzzExpandHostlist checks that no input panics or runs away, that a
// result is deterministic and within MaxHosts, that a list without
// brackets is its items as written, and, with HOSTLIST_FUZZ_SCONTROL=1
// and scontrol installed, that the result is what Slurm gives:
//
//	HOSTLIST_FUZZ_SCONTROL=1 go test -run '^$' -fuzz FuzzExpandHostlist ./rendezvous/
func FuzzExpandHostlist(f *testing.F) {
	for _, v := range loadHostlistVectors(f) {
		f.Add(v.List)
	}
	conf := ""
	if os.Getenv("HOSTLIST_FUZZ_SCONTROL") == "1" {
		slurmtest.Require(f, "scontrol")
		conf = slurmtest.ClientConf(f)
	}
	f.Fuzz(func(t *testing.T, list string) {
		got, err := ExpandHostlist(list)
		var he *HostlistError
		if err != nil && !errors.As(err, &he) {
			t.Fatalf("ExpandHostlist(%q) error %T; want *HostlistError", list, err)
		}
		if len(got) > MaxHosts {
			t.Fatalf("ExpandHostlist(%q) = %d hosts; want at most %d", list, len(got), MaxHosts)
		}
		again, err2 := ExpandHostlist(list)
		if fmt.Sprint(err) != fmt.Sprint(err2) || !slices.Equal(got, again) {
			t.Fatalf("ExpandHostlist(%q) differs between two calls", list)
		}
		if err == nil && !strings.ContainsAny(list, "[]") {
			want := strings.FieldsFunc(list, func(r rune) bool { return strings.ContainsRune(hostlistSeparators, r) })
			if !slices.Equal(got, want) {
				t.Fatalf("ExpandHostlist(%q) = %q; want the items as written %q", list, got, want)
			}
		}
		if conf == "" || strings.ContainsAny(list, "\x00\n") {
			return // scontrol cannot take a NUL, and writes a name a line
		}
		hosts, invalid, serr := slurmtest.Hostnames(context.Background(), conf, list)
		if serr != nil {
			t.Skip(serr) // not a UTF-8 argument scontrol can take, or scontrol itself failed
		}
		checkAgainstSlurm(t, list, hosts, invalid, err != nil && he.SlurmAccepts && !invalid)
	})
}
