//go:build linux

package launcher

import (
	"strings"
	"testing"

	"github.com/mpspawn/mpspawn/place"
)

func envMap(env []string) map[string]string {
	m := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func TestRankEnv(t *testing.T) {
	base := &Job{NProcPerNode: 4, NNodes: 2, NodeRank: 1, MasterAddr: "10.0.0.1", MasterPort: 29500,
		RunID: "r", StartMethod: "spawn", LogDir: "/logs", Env: []string{"PATH=/bin", "RANK=stale"}}
	tests := []struct {
		name  string
		env   []string
		ranks []place.Rank
		want  map[string]string
	}{
		{"contract", nil, nil, map[string]string{
			"RANK": "6", "LOCAL_RANK": "2", "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4",
			"GROUP_RANK": "1", "GROUP_WORLD_SIZE": "2", "ROLE_RANK": "6", "ROLE_NAME": "default",
			"ROLE_WORLD_SIZE": "8", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500",
			"TORCHELASTIC_RUN_ID": "r", "TORCHELASTIC_RESTART_COUNT": "0", "TORCHELASTIC_MAX_RESTARTS": "0",
			"TORCHELASTIC_ERROR_FILE": "/logs/r/attempt_0/2/error.json", "OMP_NUM_THREADS": "1", "PATH": "/bin",
		}},
		{"user OMP kept", []string{"OMP_NUM_THREADS=8"}, []place.Rank{2: {Env: map[string]string{"OMP_NUM_THREADS": "3"}}},
			map[string]string{"OMP_NUM_THREADS": "8"}},
		{"placement OMP over default", nil, []place.Rank{2: {Env: map[string]string{"OMP_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "GPU-a"}}},
			map[string]string{"OMP_NUM_THREADS": "3", "CUDA_VISIBLE_DEVICES": "GPU-a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := *base
			j.Env = append(append([]string(nil), base.Env...), tt.env...)
			j.Ranks = tt.ranks
			got := envMap(j.RankEnv(2))
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("RankEnv(2)[%s] = %q; want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestParseStreams(t *testing.T) {
	tests := []struct {
		in      string
		rank    int
		want    Streams
		wantErr bool
	}{
		{"3", 7, StreamBoth, false},
		{"0:1,12:2", 12, StreamStderr, false},
		{"0:1,12:2", 5, StreamNone, false},
		{"4", 0, 0, true},
		{"x:1", 0, 0, true},
		{"1:9", 0, 0, true},
	}
	for _, tt := range tests {
		m, err := ParseStreams(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseStreams(%q) error = %v; want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if got := m.For(tt.rank); err == nil && got != tt.want {
			t.Errorf("ParseStreams(%q).For(%d) = %d; want %d", tt.in, tt.rank, got, tt.want)
		}
	}
}

func TestParseErrorFile(t *testing.T) {
	tests := []struct {
		name, in, msg, tb string
	}{
		{"torch", `{"message": {"message": "RuntimeError: x", "extraInfo": {"py_callstack": "Traceback\n", "timestamp": "1700000000"}}}`, "RuntimeError: x", "Traceback\n"},
		{"string", `{"message": "plain"}`, "plain", ""},
	}
	for _, tt := range tests {
		ef, err := ParseErrorFile([]byte(tt.in))
		if err != nil || ef.Message != tt.msg || ef.Traceback != tt.tb {
			t.Errorf("%s: ParseErrorFile = %+v, %v; want %q, %q", tt.name, ef, err, tt.msg, tt.tb)
		}
	}
	if _, err := ParseErrorFile([]byte("{")); err == nil {
		t.Error("ParseErrorFile(\"{\") succeeded; want an error")
	}
}
