package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"testing"

	"github.com/mpspawn/mpspawn/gpu"
	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/rendezvous"
)

// usageText is the line run prints for err, which must be a usage error.
func usageText(t *testing.T, err error) string {
	t.Helper()
	var ue usageError
	if !errors.As(err, &ue) {
		t.Fatalf("%v is not a usage error", err)
	}
	return ue.err.Error()
}

func TestRendezvousUsage(t *testing.T) {
	tests := []struct {
		cfg  rendezvous.Config
		want string
	}{
		{rendezvous.Config{NNodes: 0, NProcPerNode: 1}, "--nnodes 0 must be at least 1"},
		{rendezvous.Config{NNodes: 2, NodeRank: -1, NProcPerNode: 1}, "--node-rank -1 must not be negative"},
		{rendezvous.Config{NNodes: 2, NodeRank: 2, NProcPerNode: 1}, "--node-rank 2 must be less than --nnodes 2"},
		{rendezvous.Config{NNodes: 1, NProcPerNode: 0}, "--nproc-per-node 0 must be at least 1"},
		{rendezvous.Config{NNodes: 2, NodeRank: 1, NProcPerNode: 1, Standalone: true}, "--nnodes 2 must be 1 for a standalone job"},
		{rendezvous.Config{NNodes: 1, NProcPerNode: 1, MasterPort: 70000}, "--master-port 70000 must be between 1 and 65535 (or 0 for the default)"},
		{rendezvous.Config{NNodes: 1, NProcPerNode: 1, MasterAddr: "a/b"}, `--master-addr "a/b" must be a host name or IP address, without spaces or '/'`},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := usageText(t, rendezvousUsage(tt.cfg.Validate())); got != tt.want {
				t.Errorf("rendezvousUsage(%+v.Validate()) = %q; want %q", tt.cfg, got, tt.want)
			}
		})
	}
}

// TestRendezvousFlags checks that every rendezvous.Config field has a flag
// to name in messages.
func TestRendezvousFlags(t *testing.T) {
	typ := reflect.TypeFor[rendezvous.Config]()
	for i := range typ.NumField() {
		if name := typ.Field(i).Name; rendezvousFlags[name] == "" {
			t.Errorf("rendezvousFlags[%q] is missing", name)
		}
	}
}

func TestStreamsUsage(t *testing.T) {
	tests := []struct{ in, want string }{
		{"4", `--tee "4": want 0 (none), 1 (stdout), 2 (stderr) or 3 (both)`},
		{"0:1,1:x", `--tee "0:1,1:x": "x": want 0 (none), 1 (stdout), 2 (stderr) or 3 (both)`},
		{"r:1", `--tee "r:1": "r": want a local rank`},
	}
	for _, tt := range tests {
		_, err := launcher.ParseStreams(tt.in)
		if got := usageText(t, streamsUsage("--tee", err)); got != tt.want {
			t.Errorf("streamsUsage(--tee, ParseStreams(%q)) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestTopologyUsage(t *testing.T) {
	dir := t.TempDir()
	bad := dir + "/bad.json"
	if err := os.WriteFile(bad, []byte(`{"gpus":[],"links":[["X"]]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ path, want string }{
		{dir + "/none.json", "--topology " + dir + "/none.json: no such file or directory"},
		{bad, "--topology " + bad + ": not a valid topology snapshot: links has 1 rows for 0 gpus"},
	}
	for _, tt := range tests {
		_, err := gpu.LoadTopology(tt.path)
		if got := usageText(t, topologyUsage(tt.path, err)); got != tt.want {
			t.Errorf("topologyUsage(%q) = %q; want %q", tt.path, got, tt.want)
		}
	}
}

func TestPlacementUsage(t *testing.T) {
	visible := &gpu.VisibleError{Value: "9", Entry: "9", Reason: "index 9 is out of range (8 gpus)"}
	few := &gpu.TooFewGPUsError{Ranks: 3, GPUsPerRank: 2, Want: 6, Have: 4}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"visible", visibleUsage("9", fmt.Errorf("wrapped: %w", visible)), `CUDA_VISIBLE_DEVICES="9" leaves no device visible: index 9 is out of range (8 gpus)`},
		{"too few", tooFewUsage("3", "this machine", few), "--nproc-per-node 3: 3 ranks × 2 gpus per rank need 6 gpus; 4 usable on this machine"},
	}
	for _, tt := range tests {
		if got := usageText(t, tt.err); got != tt.want {
			t.Errorf("%s: %q; want %q", tt.name, got, tt.want)
		}
	}
}

func TestGPUReason(t *testing.T) {
	tests := []struct {
		err  error
		want string
	}{
		{&gpu.NVMLError{Op: "init", GPU: -1, Detail: "libnvidia-ml.so.1 could not be loaded", Err: gpu.ErrNoNVML}, "no NVIDIA driver (libnvidia-ml.so.1 not found)"},
		{&gpu.NVMLError{Op: "init", GPU: -1, Detail: "ERROR_DRIVER_NOT_LOADED", Err: gpu.ErrNVMLFailed}, "NVML failed (init): ERROR_DRIVER_NOT_LOADED"},
		{&gpu.NVMLError{Op: "uuid", GPU: 1, Detail: "ERROR_GPU_IS_LOST", Err: gpu.ErrNVMLFailed}, "NVML failed on GPU 1 (uuid): ERROR_GPU_IS_LOST"},
		{&fs.PathError{Op: "open", Path: "/x", Err: fs.ErrPermission}, "open /x: permission denied"},
	}
	for _, tt := range tests {
		if got := gpuReason(tt.err); got != tt.want {
			t.Errorf("gpuReason(%v) = %q; want %q", tt.err, got, tt.want)
		}
	}
}
