package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"
)

// setSlurmStep fakes the environment srun gives the task on node 3 of a
// four-node step, whose first node does not resolve here but has an alias.
func setSlurmStep(t *testing.T, changes map[string]string) {
	t.Helper()
	env := map[string]string{
		"SLURM_JOB_ID": "41", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_NODES": "4", "SLURM_NODEID": "3",
		"SLURM_STEP_NODELIST": "rack[1-2]-n[01-02]", "SLURM_STEP_TASKS_PER_NODE": "1(x4)",
		"SLURMD_NODENAME": "rack2-n02", "SLURM_CPUS_ON_NODE": "2",
		"SLURM_NODE_ALIASES": "rack1-n01:10.9.8.7:rack1-n01",
	}
	for k, v := range changes {
		env[k] = v
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
}

// TestSlurmDryRun: under a SLURM step, with no flags, the plan has SLURM's
// world, the first node of a multi-bracket list as master (at its alias
// address), a port and run id from the job, and one rank per CPU given.
func TestSlurmDryRun(t *testing.T) {
	setSlurmStep(t, nil)
	plan := dryRunJSON(t)
	want := schedJSON{Scheduler: "slurm", SlurmJob: "41.0", NNodes: 4, NodeRank: 3, MasterAddr: "10.9.8.7", MasterPort: 15041, RunID: "41.0"}
	if plan.Rendezvous != want {
		t.Errorf("dry run rendezvous = %+v; want %+v", plan.Rendezvous, want)
	}
	if len(plan.Ranks) != 2 || plan.Ranks[0].Env["RANK"] != "6" || plan.Ranks[1].Env["WORLD_SIZE"] != "8" ||
		plan.Ranks[0].Env["MASTER_ADDR"] != "10.9.8.7" || plan.Ranks[0].Env["TORCHELASTIC_RUN_ID"] != "41.0" {
		t.Errorf("dry run ranks = %+v; want ranks 6 and 7 of 8, master 10.9.8.7, run id 41.0", plan.Ranks)
	}

	var stdout, stderr bytes.Buffer
	if code := run([]string{"mpspawn", "--dry-run"}, &stdout, &stderr); code != 0 {
		t.Fatalf("mpspawn --dry-run = %d: %s", code, stderr.String())
	}
	if line := "node 3 of 4 (slurm job 41 step 0), master 10.9.8.7:15041, run id 41.0\n"; !strings.HasPrefix(stdout.String(), line) {
		t.Errorf("dry run text = %q; want it to start with %q", stdout.String(), line)
	}
	if line := "slurm: job 41 step 0, node 3 of 4 (rack2-n02), master rack1-n01:15041 (10.9.8.7, from SLURM_NODE_ALIASES), 2 ranks (SLURM_CPUS_ON_NODE)\n"; stderr.String() != line {
		t.Errorf("stderr = %q; want the one detection line %q", stderr.String(), line)
	}
}

// TestSlurmPrecedence: the command line wins over PET_*, which wins over
// SLURM, with one note for each flag that wins over SLURM's value.
func TestSlurmPrecedence(t *testing.T) {
	setSlurmStep(t, nil)
	t.Setenv("PET_NNODES", "5")
	t.Setenv("PET_NODE_RANK", "4")
	var stdout, stderr bytes.Buffer
	args := []string{"mpspawn", "--dry-run", "--json", "--node-rank", "1", "--master-port", "2222", "--nproc-per-node", "3"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run(%q) = %d: %s", args, code, stderr.String())
	}
	for _, note := range []string{
		"mpspawn: note: PET_NNODES=5 wins over SLURM's 4 (SLURM_STEP_NUM_NODES)\n",
		"mpspawn: note: --node-rank 1 wins over SLURM's 3 (SLURM_NODEID)\n",
		"mpspawn: note: --master-port 2222 wins over SLURM's 15041 (SLURM_JOB_ID 41 and SLURM_STEP_ID 0)\n",
		"slurm: job 41 step 0, node 1 of 5 (rack2-n02), master rack1-n01:2222 (10.9.8.7, from SLURM_NODE_ALIASES)\n",
	} {
		if !strings.Contains(stderr.String(), note) {
			t.Errorf("stderr = %q; want %q in it", stderr.String(), note)
		}
	}
	if !strings.Contains(stdout.String(), `"WORLD_SIZE": "15"`) || !strings.Contains(stdout.String(), `"RANK": "3"`) {
		t.Errorf("plan = %s; want 3 ranks from rank 3 in a world of 15", stdout.String())
	}
}

// TestSlurmRefusals: several tasks on a node, and a step whose variables
// make no sense, are one line and exit code 2.
func TestSlurmRefusals(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"two tasks per node", map[string]string{"SLURM_STEP_TASKS_PER_NODE": "2(x4)"},
			"mpspawn: error: srun started 2 tasks on this node (SLURM_STEP_TASKS_PER_NODE=2(x4)), and mpspawn starts the ranks itself: run one per node, with srun --ntasks-per-node=1 … (inside sbatch: srun -N $SLURM_NNODES -n $SLURM_NNODES …, as a plain --ntasks-per-node=1 is ignored there when SLURM_NTASKS is inherited)\n"},
		{"bad node list", map[string]string{"SLURM_STEP_NODELIST": "rack[1-2]-n[02-01]"},
			`mpspawn: error: inside a SLURM step, SLURM_STEP_NODELIST="rack[1-2]-n[02-01]": has a range that runs backwards (N > M): "02-01"` + "\n"},
		{"node list too short", map[string]string{"SLURM_STEP_NODELIST": "n[1-3]"},
			`mpspawn: error: inside a SLURM step, SLURM_STEP_NODELIST="n[1-3]" names 3 nodes, not SLURM_STEP_NUM_NODES=4` + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setSlurmStep(t, tt.env)
			var stdout, stderr bytes.Buffer
			if code := run([]string{"mpspawn", "--no-python", "true"}, &stdout, &stderr); code != 2 || stderr.String() != tt.want {
				t.Errorf("run = %d, stderr %q; want 2 and %q", code, stderr.String(), tt.want)
			}
		})
	}
}

// TestSlurmGPUs: the GPUs SLURM gave the step are the ones the ranks may
// use, one rank each, whether Slurm says so with SLURM_STEP_GPUS alone or
// with CUDA_VISIBLE_DEVICES too.
func TestSlurmGPUs(t *testing.T) {
	const topo = "../../testdata/topology/nvlink-pairs-8gpu.json"
	data, err := os.ReadFile(topo)
	if err != nil {
		t.Fatal(err)
	}
	var snapshot struct {
		GPUs []struct {
			UUID string `json:"uuid"`
		} `json:"gpus"`
	}
	if err := json.Unmarshal(data, &snapshot); err != nil {
		t.Fatal(err)
	}
	given := map[string]bool{snapshot.GPUs[2].UUID: true, snapshot.GPUs[5].UUID: true, snapshot.GPUs[6].UUID: true}
	for _, tt := range []struct {
		name string
		env  map[string]string
	}{
		{"SLURM_STEP_GPUS", map[string]string{"SLURM_STEP_GPUS": "2,5,6"}},
		{"CUDA_VISIBLE_DEVICES", map[string]string{"SLURM_STEP_GPUS": "2,5,6", "CUDA_VISIBLE_DEVICES": "2,5,6"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setSlurmStep(t, tt.env)
			plan := dryRunJSON(t, "--topology", topo)
			used := map[string]bool{}
			for _, r := range plan.Ranks {
				if len(r.GPUs) != 1 || !given[r.GPUs[0]] {
					t.Errorf("local rank %d has GPUs %q; want one of the step's (2, 5, 6: %v)", r.LocalRank, r.GPUs, given)
				} else {
					used[r.GPUs[0]] = true
				}
			}
			if len(plan.Ranks) != 3 || len(used) != 3 || plan.Ranks[0].Env["WORLD_SIZE"] != "12" {
				t.Errorf("%d ranks on %d GPUs; want one rank on each GPU of the step (3 of a world of 12)", len(plan.Ranks), len(used))
			}
			var stdout, stderr bytes.Buffer
			code := run([]string{"mpspawn", "--dry-run", "--topology", topo, "--nproc-per-node", "4"}, &stdout, &stderr)
			if code != 2 || !strings.Contains(stderr.String(), "need 4 gpus; 3 usable") {
				t.Errorf("--nproc-per-node 4 on a step given 3 GPUs: run = %d, stderr %q; want 2 and 3 usable", code, stderr.String())
			}
		})
	}
}

// TestSlurmEtcd: with --rdzv-backend etcd the step gives the node count
// and the rendezvous id (<job>.<step>); node ranks and master come from the
// rendezvous, so SLURM's are not looked up.
func TestSlurmEtcd(t *testing.T) {
	setSlurmStep(t, map[string]string{"SLURM_NODE_ALIASES": ""})
	var stdout, stderr bytes.Buffer
	args := []string{"mpspawn", "--dry-run", "--rdzv-backend", "etcd", "--rdzv-endpoint", "127.0.0.1:2379"}
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("run(%q) = %d: %s", args, code, stderr.String())
	}
	if want := "slurm: job 41 step 0, 4 nodes, node rank and master from the etcd rendezvous, 2 ranks (SLURM_CPUS_ON_NODE)\n"; stderr.String() != want {
		t.Errorf("stderr = %q; want %q (and no lookup of rack1-n01)", stderr.String(), want)
	}
	if !strings.Contains(stdout.String(), "run id 41.0") {
		t.Errorf("dry run = %q; want run id 41.0", stdout.String())
	}
}

// TestSlurmNoMasterAddr: a launch whose master node has no address here
// (its name does not resolve, no alias, no Slurm to ask) stops before
// anything starts, in one line that says both reasons and the way out.
func TestSlurmNoMasterAddr(t *testing.T) {
	setSlurmStep(t, map[string]string{"SLURM_NODE_ALIASES": "", "SLURM_STEP_NODELIST": "n1.invalid,n2.invalid,n3.invalid,n4.invalid"})
	t.Setenv("PATH", "")
	var stdout, stderr bytes.Buffer
	code := run([]string{"mpspawn", "--no-python", "/bin/true"}, &stdout, &stderr)
	msg := stderr.String()
	if code != 2 || strings.Count(msg, "\n") != 1 ||
		!strings.HasPrefix(msg, "mpspawn: error: SLURM's master node n1.invalid has no address here: its name does not resolve (") ||
		!strings.HasSuffix(msg, ") and scontrol show node n1.invalid gave no NodeAddr (executable file not found in $PATH); give it with --master-addr\n") {
		t.Errorf("run = %d, stderr %q; want 2 and one line with both reasons and --master-addr", code, msg)
	}
}

// TestSlurmStandalone: --standalone inside a step runs this node alone and
// says that SLURM's step is not used.
func TestSlurmStandalone(t *testing.T) {
	setSlurmStep(t, nil)
	var stdout, stderr bytes.Buffer
	if code := run([]string{"mpspawn", "--dry-run", "--json", "--standalone"}, &stdout, &stderr); code != 0 {
		t.Fatalf("run = %d: %s", code, stderr.String())
	}
	if want := "mpspawn: note: --standalone: this node runs alone; SLURM's step 41.0 (4 nodes) is not used\n"; stderr.String() != want {
		t.Errorf("stderr = %q; want %q", stderr.String(), want)
	}
	if !strings.Contains(stdout.String(), `"scheduler": "none"`) || !strings.Contains(stdout.String(), `"master_addr": "127.0.0.1"`) {
		t.Errorf("plan = %s; want no scheduler and master 127.0.0.1", stdout.String())
	}
}
