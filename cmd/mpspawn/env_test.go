package main

import (
	"bytes"
	"encoding/json"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/urfave/cli/v2"
)

// TestEveryFlagReadsPET: each launcher flag, those added later included,
// reads PET_<FLAG> as torchrun does.
func TestEveryFlagReadsPET(t *testing.T) {
	for _, f := range flags() {
		name := f.Names()[0]
		envs := f.(cli.DocGenerationFlag).GetEnvVars()
		if want := petVar(name); name != fVersion && !slices.Contains(envs, want) {
			t.Errorf("--%s reads %q; want %s among them", name, envs, want)
		}
	}
	for name, want := range map[string]string{fNproc: "PET_NPROC_PER_NODE", fMasterAddr: "PET_MASTER_ADDR", fStandalone: "PET_STANDALONE"} {
		if got := petVar(name); got != want {
			t.Errorf("petVar(%q) = %q; want %q", name, got, want)
		}
	}
}

// dryRunJSON runs mpspawn --dry-run --json with args and returns the plan.
func dryRunJSON(t *testing.T, args ...string) planJSON {
	t.Helper()
	var stdout, stderr bytes.Buffer
	argv := append([]string{"mpspawn", "--dry-run", "--json"}, args...)
	if code := run(append(argv, "--no-python", "true"), &stdout, &stderr); code != 0 {
		t.Fatalf("run(%q) = %d; stderr %q", argv, code, stderr.String())
	}
	var plan planJSON
	if err := json.Unmarshal(stdout.Bytes(), &plan); err != nil {
		t.Fatalf("run(%q) printed %q: %v", argv, stdout.String(), err)
	}
	return plan
}

// TestPETEnvironment: a PyTorchJob-style environment gives the world it
// describes, and the command line wins over it.
func TestPETEnvironment(t *testing.T) {
	for k, v := range map[string]string{
		"PET_NPROC_PER_NODE": "3", "PET_NNODES": "2", "PET_NODE_RANK": "1",
		"PET_MASTER_ADDR": "trainer-master-0", "PET_MASTER_PORT": "23456",
	} {
		t.Setenv(k, v)
	}
	tests := []struct {
		name  string
		args  []string
		ranks []string // RANK of each local rank
		want  map[string]string
	}{
		{"PET only", nil, []string{"3", "4", "5"}, map[string]string{
			"WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "3", "GROUP_RANK": "1",
			"MASTER_ADDR": "trainer-master-0", "MASTER_PORT": "23456"}},
		{"command line wins", []string{"--nproc_per_node", "2", "--master-port=3456", "--node-rank", "0"}, []string{"0", "1"}, map[string]string{
			"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
			"MASTER_ADDR": "trainer-master-0", "MASTER_PORT": "3456"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			plan := dryRunJSON(t, tt.args...)
			var ranks []string
			for _, r := range plan.Ranks {
				ranks = append(ranks, r.Env["RANK"])
				for k, v := range tt.want {
					if r.Env[k] != v {
						t.Errorf("%s: local rank %d has %s=%q; want %q", strings.Join(tt.args, " "), r.LocalRank, k, r.Env[k], v)
					}
				}
			}
			if !slices.Equal(ranks, tt.ranks) {
				t.Errorf("%s: ranks %q; want %q", strings.Join(tt.args, " "), ranks, tt.ranks)
			}
		})
	}
}

// TestPETBadValue: a PET_* value that is not of the flag's type is one
// line and exit code 2, before anything starts.
func TestPETBadValue(t *testing.T) {
	for _, tt := range []struct{ env, value, want string }{
		{"PET_NODE_RANK", "first", `mpspawn: error: PET_NODE_RANK="first": want a whole number (it sets --node-rank)` + "\n"},
		{"PET_STANDALONE", "yes", `mpspawn: error: PET_STANDALONE="yes": want true or false (or 1 or 0) (it sets --standalone)` + "\n"},
	} {
		t.Run(tt.env, func(t *testing.T) {
			t.Setenv(tt.env, tt.value)
			var stdout, stderr bytes.Buffer
			code := run([]string{"mpspawn", "--no-python", "true"}, &stdout, &stderr)
			if code != 2 || stderr.String() != tt.want {
				t.Errorf("%s=%s: run = %d, stderr %q; want 2 and %q", tt.env, tt.value, code, stderr.String(), tt.want)
			}
		})
	}
}

// cmdFreePort: freeport VAR — sets VAR to a TCP port that no socket on
// this host held a moment ago.
func cmdFreePort(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: freeport VAR")
	}
	l, err := net.Listen("tcp", ":0")
	ts.Check(err)
	port := l.Addr().(*net.TCPAddr).Port
	ts.Check(l.Close())
	ts.Setenv(args[0], strconv.Itoa(port))
}
