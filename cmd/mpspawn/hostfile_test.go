package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParseHostfile(t *testing.T) {
	tests := []struct {
		name, text string
		want       []hostSlots
		err        string
	}{
		{"deepspeed", "# the cluster\nworker-1 slots=2\n\nworker-2 slots=1  # one GPU\n",
			[]hostSlots{{"worker-1", []int{0, 1}}, {"worker-2", []int{0}}}, ""},
		{"mpi", "a:2\nb slots=1 max_slots=4\nc\n",
			[]hostSlots{{"a", []int{0, 1}}, {"b", []int{0}}, {"c", []int{0}}}, ""},
		{"bad slots", "a slots=0\n", nil, "hosts:1: slots \"0\""},
		{"huge slots", "a\nb slots=80000\n", nil, "hosts:2: slots \"80000\""},
		{"unknown key", "a gpus=2\n", nil, "hosts:1: \"a gpus=2\""},
		{"duplicate", "a:1\na:2\n", nil, "hosts:2: host a is listed twice"},
		{"option as host", "-oProxyCommand=x slots=1\n", nil, "hosts:1: host \"-oProxyCommand=x\""},
		{"empty", "# nothing\n", nil, "hosts: no hosts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseHostfile("hosts", strings.NewReader(tt.text))
			if tt.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.err) {
					t.Errorf("parseHostfile(%q) error = %v; want one starting %q", tt.text, err, tt.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("parseHostfile(%q) = %v, %v; want %v", tt.text, got, err, tt.want)
			}
		})
	}
}

func TestFilterHosts(t *testing.T) {
	hosts, err := parseHostList("a:4,b:2,c:2")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		include, exclude string
		want             []hostSlots
		err              string
	}{
		{"", "", hosts, ""},
		{"a:0,1@c", "", []hostSlots{{"a", []int{0, 1}}, {"c", []int{0, 1}}}, ""},
		{"", "a:0,1@c", []hostSlots{{"a", []int{2, 3}}, {"b", []int{0, 1}}}, ""},
		{"", "a@b@c", nil, "--exclude \"a@b@c\" leaves no host"},
		{"z", "", nil, "--include \"z\": host \"z\" is not in the host list"},
		{"b:5", "", nil, "--include \"b:5\": b has no slot \"5\" (it has 2)"},
		{"a", "b", nil, "--include and --exclude cannot be combined"},
	}
	for _, tt := range tests {
		got, err := filterHosts(hosts, tt.include, tt.exclude)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("filterHosts(%q, %q) error = %v; want %q", tt.include, tt.exclude, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("filterHosts(%q, %q) = %v, %v; want %v", tt.include, tt.exclude, got, err, tt.want)
		}
	}
}

func TestReadHostfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hostfile")
	if err := os.WriteFile(path, []byte("a slots=2\nb slots=x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readHostfile(path); err == nil || !strings.HasPrefix(err.Error(), path+":2: ") {
		t.Errorf("readHostfile(bad line 2) = %v; want an error naming %s:2", err, path)
	}
	if _, err := readHostfile(path + ".missing"); err == nil || !strings.HasPrefix(err.Error(), "--hostfile: ") {
		t.Errorf("readHostfile(missing) = %v; want a --hostfile error", err)
	}
}
