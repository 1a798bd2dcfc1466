package contract

import (
	"reflect"
	"strings"
	"testing"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/place"
	"github.com/mpspawn/mpspawn/rendezvous"
)

func TestContractEnv(t *testing.T) {
	base := Contract{
		Membership: rendezvous.Membership{NProcPerNode: 4, NNodes: 2, NodeRank: 1, WorldSize: 8, MasterAddr: "10.0.0.1", MasterPort: 29500},
		RunID:      "r", StartMethod: launcher.MethodSpawn,
		ErrorFile: func(lr int) string { return "/logs/r/attempt_0/" + string(rune('0'+lr)) + "/error.json" },
		Base:      []string{"PATH=/bin", "RANK=stale"},
	}
	tests := []struct {
		name   string
		env    []string
		place  place.Rank
		want   map[string]string
		absent []string
	}{
		{"contract", nil, place.Rank{}, map[string]string{
			"RANK": "6", "LOCAL_RANK": "2", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
			"GROUP_RANK": "1", "GROUP_WORLD_SIZE": "2", "ROLE_RANK": "6", "ROLE_NAME": "default",
			"ROLE_WORLD_SIZE": "8", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500",
			"TORCHELASTIC_RUN_ID": "r", "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
			"TORCHELASTIC_ERROR_FILE": "/logs/r/attempt_0/2/error.json", "OMP_NUM_THREADS": "1", "PATH": "/bin",
			"MPSPAWN_START_METHOD": "spawn", "TORCHELASTIC_USE_AGENT_STORE": "False", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
		}, []string{"MPSPAWN_LOG_DIR", "MPSPAWN_CPUS"}},
		{"user NCCL error handling kept", []string{"TORCH_NCCL_ASYNC_ERROR_HANDLING=0"}, place.Rank{},
			map[string]string{"TORCH_NCCL_ASYNC_ERROR_HANDLING": "0"}, nil},
		{"legacy NCCL variable respected", []string{"NCCL_ASYNC_ERROR_HANDLING=0"}, place.Rank{},
			map[string]string{"NCCL_ASYNC_ERROR_HANDLING": "0"}, []string{"TORCH_NCCL_ASYNC_ERROR_HANDLING"}},
		{"uneven nodes: first rank is the prefix sum", nil, place.Rank{}, map[string]string{"RANK": "5"}, nil},
		{"user OMP kept", []string{"OMP_NUM_THREADS=8"}, place.Rank{Env: map[string]string{"OMP_NUM_THREADS": "3"}},
			map[string]string{"OMP_NUM_THREADS": "8"}, nil},
		{"placement OMP over default", nil, place.Rank{Env: map[string]string{"OMP_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "GPU-a"}},
			map[string]string{"OMP_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "GPU-a"}, nil},
		{"bound CPUs named", nil, place.Rank{CPUs: place.NewCPUSet(4, 5, 6, 9)},
			map[string]string{"MPSPAWN_CPUS": "4-6,9"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base
			if strings.HasPrefix(tt.name, "uneven") {
				c.FirstRank = 3 // node 0 runs 3 ranks, this node 4: local rank 2 is rank 5
			}
			c.Base = append(append([]string(nil), base.Base...), tt.env...)
			got := envMap(c.Env(2, tt.place))
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("Env(2)[%s] = %q; want %q", k, got[k], v)
				}
			}
			for _, k := range tt.absent {
				if v, ok := got[k]; ok {
					t.Errorf("Env(2)[%s] = %q; want it unset", k, v)
				}
			}
		})
	}
}

// TestContractRoundTrip: what Contract.Env builds, ReadRankEnv reads back,
// for a multi-node CLI job and for the Go API's master-less local ranks.
func TestContractRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		c     Contract
		lr    int
		place place.Rank
		want  RankEnv
	}{
		{"cli", Contract{Membership: rendezvous.Membership{NNodes: 2, NodeRank: 1, NProcPerNode: 4, WorldSize: 8, MasterAddr: "n1", MasterPort: 1234}, RunID: "job", RestartCount: 2},
			3, place.Rank{Env: map[string]string{"MPSPAWN_GPUS": "GPU-a,GPU-b"}, CPUs: place.NewCPUSet(0, 1)},
			RankEnv{Rank: 7, LocalRank: 3, WorldSize: 8, LocalWorldSize: 4, NodeRank: 1, RestartCount: 2, RunID: "job", MasterAddr: "n1", MasterPort: 1234,
				GPUs: []string{"GPU-a", "GPU-b"}, CPUs: place.NewCPUSet(0, 1)}},
		{"go api", Contract{Membership: rendezvous.Local(3)}, 2, place.Rank{},
			RankEnv{Rank: 2, LocalRank: 2, WorldSize: 3, LocalWorldSize: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := envMap(tt.c.Env(tt.lr, tt.place))
			got, err := ReadRankEnv(func(k string) string { return env[k] })
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ReadRankEnv(Env(%d)) = %+v, %v; want %+v", tt.lr, got, err, tt.want)
			}
		})
	}
}

func TestReadRankEnvRefusesMalformed(t *testing.T) {
	for _, kv := range [][2]string{{"RANK", "x"}, {"WORLD_SIZE", "1.5"}, {"MPSPAWN_CPUS", "3-1"}} {
		_, err := ReadRankEnv(func(k string) string {
			if k == kv[0] {
				return kv[1]
			}
			return ""
		})
		if err == nil {
			t.Errorf("ReadRankEnv(%s=%q) = nil error; want one", kv[0], kv[1])
		}
	}
}

// envMap is an environment as a map, the last value of a name winning.
func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}
