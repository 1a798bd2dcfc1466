package rendezvous

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"slices"
	"testing"
)

// slurmEnv is the environment srun gives the task on node 1 of a two-node
// step of job 41, with changes.
func slurmEnv(changes map[string]string) func(string) string {
	env := map[string]string{
		"SLURM_JOB_ID": "41", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": "2", "SLURM_NODEID": "1",
		"SLURM_STEP_NODELIST": "n[1-2]", "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURMD_NODENAME": "n2",
	}
	for k, v := range changes {
		if v == "" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	return func(k string) string { return env[k] }
}

func TestDetectSlurm(t *testing.T) {
	s, err := DetectSlurm(slurmEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	want := Slurm{JobID: "41", StepID: "0", NNodes: 2, NodeRank: 1, Node: "n2", Nodes: []string{"n1", "n2"},
		MasterPort: 15041, TasksOnNode: 1, TasksPerNode: "1(x2)"}
	if s.JobID != want.JobID || s.NNodes != want.NNodes || s.NodeRank != want.NodeRank || s.Node != want.Node ||
		!slices.Equal(s.Nodes, want.Nodes) || s.MasterPort != want.MasterPort || s.TasksOnNode != 1 || s.RunID() != "41.0" || s.Master() != "n1" {
		t.Errorf("DetectSlurm = %+v; want %+v", *s, want)
	}

	s, err = DetectSlurm(slurmEnv(map[string]string{
		"SLURM_JOB_ID": "123456", "SLURM_STEP_ID": "3", "SLURM_STEP_NUM_NODES": "4", "SLURM_NODEID": "3",
		"SLURM_STEP_NODELIST": "rack[1-2]-n[01-02]", "SLURM_STEP_TASKS_PER_NODE": "1(x3),2",
		"SLURM_STEP_GPUS": "2,3", "SLURM_CPUS_ON_NODE": "16",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if s.Master() != "rack1-n01" || s.Nodes[3] != "rack2-n02" || s.MasterPort != SlurmPortBase+(123456+3)%SlurmPortSpan ||
		s.TasksOnNode != 2 || s.GPUs != "2,3" || s.CPUsOnNode != 16 || s.RunID() != "123456.3" {
		t.Errorf("DetectSlurm(4 nodes) = %+v", *s)
	}

	for _, unset := range []string{"SLURM_JOB_ID", "SLURM_STEP_ID"} {
		if s, err := DetectSlurm(slurmEnv(map[string]string{unset: ""})); s != nil || err != nil {
			t.Errorf("DetectSlurm without %s = %+v, %v; want nil, nil (not inside srun)", unset, s, err)
		}
	}
}

func TestDetectSlurmErrors(t *testing.T) {
	tests := []struct {
		env     map[string]string
		variant string // the variable at fault
	}{
		{map[string]string{"SLURM_STEP_ID": "batch"}, "SLURM_STEP_ID"},
		{map[string]string{"SLURM_JOB_ID": "x"}, "SLURM_JOB_ID"},
		{map[string]string{"SLURM_STEP_NUM_NODES": "0"}, "SLURM_STEP_NUM_NODES"},
		{map[string]string{"SLURM_NODEID": "2"}, "SLURM_NODEID"},
		{map[string]string{"SLURM_NODEID": ""}, "SLURM_NODEID"},
		{map[string]string{"SLURM_STEP_NODELIST": "n[2-1]"}, "SLURM_STEP_NODELIST"},
		{map[string]string{"SLURM_STEP_NODELIST": "n[1-3]"}, "SLURM_STEP_NODELIST"},
		{map[string]string{"SLURM_STEP_TASKS_PER_NODE": "1"}, "SLURM_STEP_TASKS_PER_NODE"},
		{map[string]string{"SLURM_STEP_TASKS_PER_NODE": "1(x2"}, "SLURM_STEP_TASKS_PER_NODE"},
		{map[string]string{"SLURM_CPUS_ON_NODE": "none"}, "SLURM_CPUS_ON_NODE"},
	}
	for _, tt := range tests {
		s, err := DetectSlurm(slurmEnv(tt.env))
		var se *SlurmError
		if !errors.As(err, &se) || se.Var != tt.variant {
			t.Errorf("DetectSlurm(%v) = %+v, %v; want a *SlurmError for %s", tt.env, s, err, tt.variant)
		}
	}
	_, err := DetectSlurm(slurmEnv(map[string]string{"SLURM_STEP_NODELIST": "n[2-1]"}))
	var he *HostlistError
	if !errors.As(err, &he) {
		t.Errorf("DetectSlurm(bad node list) = %v; want it to wrap a *HostlistError", err)
	}
}

func TestExpandTasksPerNode(t *testing.T) {
	tests := []struct {
		in   string
		want []int
	}{
		{"1", []int{1}},
		{"2(x3)", []int{2, 2, 2}},
		{"2(x2),1,3(x2)", []int{2, 2, 1, 3, 3}},
	}
	for _, tt := range tests {
		if got, err := expandTasksPerNode(tt.in); err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("expandTasksPerNode(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "x", "1(x0)", "1(x2", "-1", "1(2)", "1(x99999999)"} {
		if got, err := expandTasksPerNode(bad); err == nil {
			t.Errorf("expandTasksPerNode(%q) = %v; want an error", bad, got)
		}
	}
}

func TestSlurmMasterAddr(t *testing.T) {
	ctx := context.Background()
	// No Slurm to ask: what running scontrol gives where it is not installed.
	noSlurm := func(context.Context, string) (string, error) {
		return "", &exec.Error{Name: "scontrol", Err: exec.ErrNotFound}
	}
	s, err := DetectSlurm(slurmEnv(map[string]string{
		"SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_NODE_ALIASES": "gpu08:10.0.0.8:gpu08,gpu07:[fd00::7]:gpu07",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if addr, how, err := s.MasterAddr(ctx, net.DefaultResolver.LookupHost, noSlurm); addr != "fd00::7" || how != "SLURM_NODE_ALIASES" || err != nil {
		t.Errorf("MasterAddr with aliases = %q, %q, %v; want fd00::7 from SLURM_NODE_ALIASES", addr, how, err)
	}
	s.Nodes[0] = "localhost" // resolves everywhere (/etc/hosts)
	if addr, how, err := s.MasterAddr(ctx, net.DefaultResolver.LookupHost, noSlurm); addr != "localhost" || err != nil {
		t.Errorf("MasterAddr(localhost) = %q, %q, %v; want localhost, its own name", addr, how, err)
	}
	// A name that resolves nowhere, and no Slurm to ask: both reasons come
	// back.
	s.Nodes[0] = "no-such-node.invalid"
	_, _, err = s.MasterAddr(ctx, net.DefaultResolver.LookupHost, noSlurm)
	var me *MasterAddrError
	if !errors.As(err, &me) || me.Node != "no-such-node.invalid" || me.DNS == nil || me.Slurm == nil {
		t.Errorf("MasterAddr(unresolvable, no scontrol) = %v; want a *MasterAddrError with both reasons", err)
	}
}

// TestSlurmMasterAddrAsksSlurm: a name that does not resolve is looked up
// in Slurm, whose answer comes back with how it was found.
func TestSlurmMasterAddrAsksSlurm(t *testing.T) {
	s, err := DetectSlurm(slurmEnv(map[string]string{"SLURM_STEP_NODELIST": "no-such-node.invalid,n2"}))
	if err != nil {
		t.Fatal(err)
	}
	var asked string
	nodeAddr := func(_ context.Context, node string) (string, error) { asked = node; return "10.1.1.1", nil }
	addr, how, err := s.MasterAddr(context.Background(), net.DefaultResolver.LookupHost, nodeAddr)
	if addr != "10.1.1.1" || how != "scontrol show node no-such-node.invalid" || err != nil || asked != "no-such-node.invalid" {
		t.Errorf("MasterAddr = %q, %q, %v (asked %q); want 10.1.1.1 from scontrol show node no-such-node.invalid", addr, how, err, asked)
	}
}

func TestParseNodeAddr(t *testing.T) {
	out := "NodeName=n1 Arch=x86_64 CoresPerSocket=1\n   NodeAddr=10.0.0.1 NodeHostName=n1 Version=23.02\n"
	if addr, err := ParseNodeAddr([]byte(out)); addr != "10.0.0.1" || err != nil {
		t.Errorf("ParseNodeAddr(%q) = %q, %v; want 10.0.0.1", out, addr, err)
	}
	for _, bad := range []string{"", "NodeName=n1 NodeAddr= State=IDLE"} {
		if addr, err := ParseNodeAddr([]byte(bad)); !errors.Is(err, ErrNoNodeAddr) {
			t.Errorf("ParseNodeAddr(%q) = %q, %v; want ErrNoNodeAddr", bad, addr, err)
		}
	}
}
