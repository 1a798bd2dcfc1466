package rendezvous

import (
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

func TestStaticInvalid(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no nodes", Config{NNodes: 0, NProcPerNode: 1}, "rendezvous: --nnodes 0 must be at least 1"},
		{"negative node rank", Config{NNodes: 2, NodeRank: -1, NProcPerNode: 1}, "rendezvous: --node-rank -1 must not be negative"},
		{"node rank too big", Config{NNodes: 2, NodeRank: 2, NProcPerNode: 1}, "rendezvous: --node-rank 2 must be less than --nnodes 2"},
		{"no procs", Config{NNodes: 1, NProcPerNode: 0}, "rendezvous: --nproc-per-node 0 must be at least 1"},
		{"port too big", Config{NNodes: 1, NProcPerNode: 1, MasterPort: 65536}, "rendezvous: --master-port 65536 must be between 1 and 65535"},
		{"negative port", Config{NNodes: 1, NProcPerNode: 1, MasterPort: -1}, "rendezvous: --master-port -1 must be between 1 and 65535"},
		{"addr with space", Config{NNodes: 1, NProcPerNode: 1, MasterAddr: "node 1"}, `rendezvous: --master-addr "node 1" must be a host name or IP address, without spaces or '/'`},
		{"addr with slash", Config{NNodes: 1, NProcPerNode: 1, MasterAddr: "10.0.0.0/8"}, `rendezvous: --master-addr "10.0.0.0/8" must be a host name or IP address, without spaces or '/'`},
		{"addr with newline", Config{NNodes: 1, NProcPerNode: 1, MasterAddr: "a\nb"}, `rendezvous: --master-addr "a\nb" must be a host name or IP address, without spaces or '/'`},
		{"standalone two nodes", Config{NNodes: 2, NodeRank: 1, NProcPerNode: 1, Standalone: true}, "rendezvous: --standalone runs one node, not --nnodes 2"},
		{"standalone node rank", Config{NNodes: 1, NodeRank: 1, NProcPerNode: 1, Standalone: true}, "rendezvous: --node-rank 1 must be less than --nnodes 1"},
		{"standalone bad port", Config{NNodes: 1, NProcPerNode: 1, Standalone: true, MasterPort: 70000}, "rendezvous: --master-port 70000 must be between 1 and 65535"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := Static(tt.cfg)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("Static(%+v) = %v; want %v", tt.cfg, err, tt.want)
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("errors.Is(Static(%+v), ErrConfig) = false; want true", tt.cfg)
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
