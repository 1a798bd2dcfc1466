package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// helperEnv, when set, makes the test binary act as a helper process in the
// named mode (see helperMain) instead of running tests.
const helperEnv = "RENDEZVOUS_TEST_HELPER"

func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		os.Exit(helperMain(mode))
	}
	goleak.VerifyTestMain(m)
}

var standalone = Config{NNodes: 1, NProcPerNode: 1, Standalone: true}

// invalidConfigs are Configs that Validate rejects, with the error it gives.
var invalidConfigs = []struct {
	name string
	cfg  Config
	want ConfigError
	msg  string
}{
	{"no nodes", Config{NNodes: 0, NProcPerNode: 1},
		ConfigError{Field: "NNodes", Value: 0, Reason: "must be at least 1"},
		"rendezvous: config: NNodes 0 must be at least 1"},
	{"negative node rank", Config{NNodes: 2, NodeRank: -1, NProcPerNode: 1},
		ConfigError{Field: "NodeRank", Value: -1, Reason: "must not be negative"},
		"rendezvous: config: NodeRank -1 must not be negative"},
	{"node rank too big", Config{NNodes: 2, NodeRank: 2, NProcPerNode: 1},
		ConfigError{Field: "NodeRank", Value: 2, Reason: "must be less than", Other: "NNodes", OtherValue: 2},
		"rendezvous: config: NodeRank 2 must be less than NNodes 2"},
	{"no procs", Config{NNodes: 1, NProcPerNode: 0},
		ConfigError{Field: "NProcPerNode", Value: 0, Reason: "must be at least 1"},
		"rendezvous: config: NProcPerNode 0 must be at least 1"},
	{"port too big", Config{NNodes: 1, NProcPerNode: 1, MasterPort: 65536},
		ConfigError{Field: "MasterPort", Value: 65536, Reason: "must be between 1 and 65535 (or 0 for the default)"},
		"rendezvous: config: MasterPort 65536 must be between 1 and 65535 (or 0 for the default)"},
	{"negative port", Config{NNodes: 1, NProcPerNode: 1, MasterPort: -1},
		ConfigError{Field: "MasterPort", Value: -1, Reason: "must be between 1 and 65535 (or 0 for the default)"},
		"rendezvous: config: MasterPort -1 must be between 1 and 65535 (or 0 for the default)"},
	{"addr with space", Config{NNodes: 1, NProcPerNode: 1, MasterAddr: "node 1"},
		ConfigError{Field: "MasterAddr", Value: "node 1", Reason: "must be a host name or IP address, without spaces or '/'"},
		`rendezvous: config: MasterAddr "node 1" must be a host name or IP address, without spaces or '/'`},
	{"addr with slash", Config{NNodes: 1, NProcPerNode: 1, MasterAddr: "10.0.0.0/8"},
		ConfigError{Field: "MasterAddr", Value: "10.0.0.0/8", Reason: "must be a host name or IP address, without spaces or '/'"},
		`rendezvous: config: MasterAddr "10.0.0.0/8" must be a host name or IP address, without spaces or '/'`},
	{"addr with newline", Config{NNodes: 1, NProcPerNode: 1, MasterAddr: "a\nb"},
		ConfigError{Field: "MasterAddr", Value: "a\nb", Reason: "must be a host name or IP address, without spaces or '/'"},
		`rendezvous: config: MasterAddr "a\nb" must be a host name or IP address, without spaces or '/'`},
	{"standalone two nodes", Config{NNodes: 2, NodeRank: 1, NProcPerNode: 1, Standalone: true},
		ConfigError{Field: "NNodes", Value: 2, Reason: "must be 1 for a standalone job"},
		"rendezvous: config: NNodes 2 must be 1 for a standalone job"},
	{"standalone node rank", Config{NNodes: 1, NodeRank: 1, NProcPerNode: 1, Standalone: true},
		ConfigError{Field: "NodeRank", Value: 1, Reason: "must be less than", Other: "NNodes", OtherValue: 1},
		"rendezvous: config: NodeRank 1 must be less than NNodes 1"},
	{"standalone bad port", Config{NNodes: 1, NProcPerNode: 1, Standalone: true, MasterPort: 70000},
		ConfigError{Field: "MasterPort", Value: 70000, Reason: "must be between 1 and 65535 (or 0 for the default)"},
		"rendezvous: config: MasterPort 70000 must be between 1 and 65535 (or 0 for the default)"},
}

func TestValidate(t *testing.T) {
	for _, tt := range invalidConfigs {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			var ce *ConfigError
			if !errors.As(err, &ce) || *ce != tt.want {
				t.Fatalf("%+v.Validate() = %#v; want %#v", tt.cfg, err, &tt.want)
			}
			if err.Error() != tt.msg {
				t.Errorf("%+v.Validate() = %q; want %q", tt.cfg, err, tt.msg)
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("errors.Is(%+v.Validate(), ErrConfig) = false; want true", tt.cfg)
			}
		})
	}
	valid := []Config{
		{NNodes: 1, NProcPerNode: 1},
		{NNodes: 4, NodeRank: 3, NProcPerNode: 8, MasterAddr: "fe80::1%eth0", MasterPort: 65535},
		{NNodes: 1, NProcPerNode: 2, Standalone: true},
	}
	for _, cfg := range valid {
		if err := cfg.Validate(); err != nil {
			t.Errorf("%+v.Validate() = %v; want nil", cfg, err)
		}
	}
}

// TestStaticInvalid checks that Static refuses what Validate refuses, with
// the same error, and reserves nothing.
func TestStaticInvalid(t *testing.T) {
	for _, tt := range invalidConfigs {
		t.Run(tt.name, func(t *testing.T) {
			j, err := Static(tt.cfg)
			var ce *ConfigError
			if !errors.As(err, &ce) || *ce != tt.want {
				t.Fatalf("Static(%+v) = %v; want %v", tt.cfg, err, tt.msg)
			}
			if j != nil {
				t.Errorf("Static(%+v) job = %+v; want nil", tt.cfg, j)
			}
		})
	}
}

// jobView is the comparable part of a Job.
type jobView struct {
	NNodes, NodeRank, NProcPerNode, WorldSize int
	MasterAddr                                string
	MasterPort                                int
	Held                                      bool
}

func view(j *Job) jobView {
	return jobView{j.NNodes, j.NodeRank, j.NProcPerNode, j.WorldSize, j.MasterAddr, j.MasterPort, j.hold != nil}
}

func TestStatic(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want jobView
	}{
		{"defaults", Config{NNodes: 1, NProcPerNode: 1}, jobView{1, 0, 1, 1, "127.0.0.1", 29500, false}},
		{"multi node", Config{NNodes: 4, NodeRank: 2, NProcPerNode: 8, MasterAddr: "node-0.cluster", MasterPort: 1234}, jobView{4, 2, 8, 32, "node-0.cluster", 1234, false}},
		{"ipv6 addr", Config{NNodes: 2, NodeRank: 1, NProcPerNode: 2, MasterAddr: "fe80::1%eth0", MasterPort: 65535}, jobView{2, 1, 2, 4, "fe80::1%eth0", 65535, false}},
		{"standalone given port", Config{NNodes: 1, NProcPerNode: 3, MasterAddr: "10.1.2.3", MasterPort: 40000, Standalone: true}, jobView{1, 0, 3, 3, "127.0.0.1", 40000, false}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := Static(tt.cfg)
			if err != nil {
				t.Fatalf("Static(%+v) = %v; want nil error", tt.cfg, err)
			}
			defer j.Close()
			if got := view(j); got != tt.want {
				t.Errorf("Static(%+v) = %+v; want %+v", tt.cfg, got, tt.want)
			}
		})
	}
}

func TestStaticStandaloneReserves(t *testing.T) {
	j, err := Static(standalone)
	if err != nil {
		t.Fatalf("Static(%+v) = %v; want nil error", standalone, err)
	}
	defer j.Close()
	if j.MasterAddr != "127.0.0.1" || j.MasterPort < 1 || j.MasterPort > 65535 || j.WorldSize != 1 {
		t.Errorf("Static(%+v) = %+v; want 127.0.0.1, a port in 1..65535, world size 1", standalone, view(j))
	}
}

func TestRank(t *testing.T) {
	tests := []struct {
		nodeRank, nproc, local, want int
	}{
		{0, 1, 0, 0},
		{0, 8, 7, 7},
		{1, 8, 0, 8},
		{3, 4, 2, 14},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("node%d_nproc%d_local%d", tt.nodeRank, tt.nproc, tt.local), func(t *testing.T) {
			j := Membership{NodeRank: tt.nodeRank, NProcPerNode: tt.nproc}
			if got := j.Rank(tt.local); got != tt.want {
				t.Errorf("Membership{NodeRank: %d, NProcPerNode: %d}.Rank(%d) = %d; want %d", tt.nodeRank, tt.nproc, tt.local, got, tt.want)
			}
		})
	}
}

func TestRankOutOfRangePanics(t *testing.T) {
	for _, local := range []int{-1, 4, 5} {
		t.Run(fmt.Sprint(local), func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("Membership{NProcPerNode: 4}.Rank(%d) did not panic; want a panic", local)
				}
			}()
			Membership{NProcPerNode: 4}.Rank(local)
		})
	}
}

func TestCloseIdempotent(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"standalone", standalone},
		{"fixed port", Config{NNodes: 1, NProcPerNode: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := Static(tt.cfg)
			if err != nil {
				t.Fatalf("Static(%+v) = %v; want nil error", tt.cfg, err)
			}
			var wg sync.WaitGroup
			errs := make([]error, 4)
			for i := range errs {
				wg.Go(func() { errs[i] = j.Close() })
			}
			wg.Wait()
			errs = append(errs, j.Close())
			for i, err := range errs {
				if err != nil {
					t.Errorf("Close() #%d = %v; want nil", i, err)
				}
			}
			if j.hold != nil {
				t.Errorf("after Close, hold = %v; want nil", j.hold)
			}
		})
	}
}

// TestStaticRounds: a static Job is a Rendezvous whose rounds count the
// restarts of one node, with the same membership every time.
func TestStaticRounds(t *testing.T) {
	j, err := Static(Config{NNodes: 2, NodeRank: 1, NProcPerNode: 2, MasterAddr: "10.0.0.1", MasterPort: 1234})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var r Rendezvous = j
	for want := range 3 {
		got, err := r.Next(context.Background())
		if err != nil || got.Restart != want || got.Number != want || got.Membership != j.Membership {
			t.Errorf("Next #%d = %+v, %v; want restart %d and the static membership", want, got, err, want)
		}
	}
	if r.Stopped() != nil {
		t.Errorf("Stopped() = non-nil; want nil: no other node stops a static job")
	}
	f := Failure{Rank: 2, ExitCode: 3}
	if got, err := r.Fail(context.Background(), f); err != nil || got != f {
		t.Errorf("Fail = %+v, %v; want %+v", got, err, f)
	}
}
