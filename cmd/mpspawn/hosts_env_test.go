package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestTravellingEnvDefaults: the default list travels, CUDA_VISIBLE_DEVICES
// and the token stay home, other variables stay home, sorted by name.
func TestTravellingEnvDefaults(t *testing.T) {
	t.Setenv("HOME", t.TempDir()) // no ~/.mpspawn_env
	environ := []string{"PATH=/usr/bin", "HOME=/root", "NCCL_DEBUG=INFO", "CUDA_HOME=/usr/local/cuda", "CUDA_VISIBLE_DEVICES=0,1",
		"PYTHONPATH=/src", "OMP_NUM_THREADS=4", "HF_HOME=/hf", "WANDB_MODE=offline", "MPSPAWN_RDZV_TOKEN=s3cret", "MYVAR=1", "TORCH_SHOW_CPP_STACKTRACES=1"}
	got, err := travellingEnv(environ, nil, t.TempDir())
	want := []string{"CUDA_HOME=/usr/local/cuda", "HF_HOME=/hf", "NCCL_DEBUG=INFO", "OMP_NUM_THREADS=4", "PYTHONPATH=/src",
		"TORCH_SHOW_CPP_STACKTRACES=1", "WANDB_MODE=offline"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("travellingEnv = %q, %v; want %q", got, err, want)
	}
}

// TestTravellingEnvFlags: --env NAME takes its value here, NAME=VALUE its
// own; both win over the default list and .mpspawn_env; a NAME not set
// here and a bad name are usage errors.
func TestTravellingEnvFlags(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	cwd := t.TempDir()
	if err := os.WriteFile(filepath.Join(cwd, envFile), []byte("NCCL_DEBUG=WARN\nFROM_FILE=1\nMINE=file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	environ := []string{"NCCL_DEBUG=INFO", "MINE=here", "CUDA_VISIBLE_DEVICES=3"}
	got, err := travellingEnv(environ, []string{"MINE", "EXTRA=a=b", "CUDA_VISIBLE_DEVICES"}, cwd)
	want := []string{"CUDA_VISIBLE_DEVICES=3", "EXTRA=a=b", "FROM_FILE=1", "MINE=here", "NCCL_DEBUG=WARN"}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("travellingEnv = %q, %v; want %q", got, err, want)
	}
	for _, tc := range []struct{ flag, want string }{
		{"NOT_SET_HERE", "--env NOT_SET_HERE: not set here; give --env NOT_SET_HERE=VALUE"},
		{"1BAD=x", `--env "1BAD=x": not a variable name`},
		{"A-B=x", `--env "A-B=x": not a variable name`},
	} {
		_, err := travellingEnv(environ, []string{tc.flag}, cwd)
		var ue usageError
		if !errors.As(err, &ue) || err.Error() != tc.want {
			t.Errorf("--env %s: error %v; want the usage error %q", tc.flag, err, tc.want)
		}
	}
}

// TestTravellingEnvFile: .mpspawn_env's comments, blank lines and export
// prefixes; the working directory's file, else the home directory's; a bad
// line names file:line.
func TestTravellingEnvFile(t *testing.T) {
	home, cwd := t.TempDir(), t.TempDir()
	t.Setenv("HOME", home)
	write := func(dir, text string) string {
		p := filepath.Join(dir, envFile)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write(home, "FROM_HOME=1\n")
	if got, err := travellingEnv(nil, nil, cwd); err != nil || !slices.Equal(got, []string{"FROM_HOME=1"}) {
		t.Errorf("no file in the working directory: %q, %v; want the home directory's FROM_HOME=1", got, err)
	}
	write(cwd, "# a comment\n\n   \nA=1\n  export B=two words  \nC=\n#D=4\nE=x=y\n")
	want := []string{"A=1", "B=two words", "C=", "E=x=y"}
	if got, err := travellingEnv(nil, nil, cwd); err != nil || !slices.Equal(got, want) {
		t.Errorf("the working directory's file: %q, %v; want %q (and not the home directory's)", got, err, want)
	}
	for _, bad := range []string{"A=1\n# fine\nnot a line\n", "A=1\n\n=3\n", "A=1\nB=2\n9X=1\n"} {
		p := write(cwd, bad)
		_, err := travellingEnv(nil, nil, cwd)
		if want := p + ":3: want NAME=VALUE"; err == nil || err.Error() != want {
			t.Errorf("file %q: error %v; want %q", bad, err, want)
		}
	}
}

// TestTravellingEnvFileExit: a bad .mpspawn_env line is one error line
// naming file:line, exit 2.
func TestTravellingEnvFileExit(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	cwd := t.TempDir()
	t.Chdir(cwd)
	if err := os.WriteFile(envFile, []byte("# ok\nA=1\nbroken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"mpspawn", "--hosts", "a,b", "--rdzv-endpoint", "10.0.0.1:29400", "--dry-run", "--no-python", "true"}, &stdout, &stderr)
	want := "mpspawn: error: " + filepath.Join(cwd, envFile) + ":3: want NAME=VALUE\n"
	if code != 2 || stderr.String() != want || stdout.Len() != 0 {
		t.Errorf("exit %d, stderr %q, stdout %q; want exit 2 and only %q", code, stderr.String(), stdout.String(), want)
	}
}

// TestHostsSplitJobArgs: the job flags every node gets, without the
// driver's own, and the program with its arguments.
func TestHostsSplitJobArgs(t *testing.T) {
	fs := flags()
	for _, tc := range []struct {
		args, job, prog []string
	}{
		{[]string{"--hosts", "a:2,b:2", "--nproc-per-node", "2", "--max-restarts", "3", "--no-python", "sh", "-c", "echo --hosts"},
			[]string{"--max-restarts", "3", "--no-python"}, []string{"sh", "-c", "echo --hosts"}},
		{[]string{"--hosts=a:2", "-H", "b", "--ssh", "ssh -p 2222", "--env", "A", "--env=B=1", "--ship", "--dry-run", "--grace-period=5s", "train.py", "--lr", "1"},
			[]string{"--grace-period=5s"}, []string{"train.py", "--lr", "1"}},
		{[]string{"--hostfile", "hf", "--include", "a:0@b", "--exclude", "c", "--rdzv-id", "x", "--rdzv-endpoint", "h:1", "--summary-json", "s.json", "--", "-dash.py", "--x"},
			nil, []string{"-dash.py", "--x"}},
		{[]string{"--hosts", "a", "--remote-mpspawn", "/opt/mpspawn", "--quiet", "--log-line-prefix-template", "[{rank}] ", "-m", "pkg.mod"},
			[]string{"--log-line-prefix-template", "[{rank}] ", "-m"}, []string{"pkg.mod"}},
		{[]string{"--hosts", "a", "--no-python"}, []string{"--no-python"}, nil},
	} {
		job, prog := splitJobArgs(tc.args, fs)
		if !slices.Equal(job, tc.job) || !slices.Equal(prog, tc.prog) {
			t.Errorf("splitJobArgs(%q) = %q, %q; want %q, %q", tc.args, job, prog, tc.job, tc.prog)
		}
	}
}

// TestDryRunHosts: --dry-run prints, per host, the exact command line ssh
// runs there and the environment its node gets, the token hidden.
func TestDryRunHosts(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	for _, kv := range os.Environ() { // only the test's own variables travel
		k, _, _ := strings.Cut(kv, "=")
		if env, _ := travellingEnv([]string{kv}, nil, t.TempDir()); len(env) > 0 {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	t.Setenv("NCCL_DEBUG", "INFO")
	t.Setenv("CUDA_VISIBLE_DEVICES", "0")
	cwd := t.TempDir()
	t.Chdir(cwd)
	token := filepath.Join(cwd, "token")
	if err := os.WriteFile(token, []byte("s3cret-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"mpspawn", "--hosts", "a:2,b:1", "--include", "a:0,1@b", "--ssh", "ssh -p 2222", "--ssh-timeout", "7s",
		"--remote-mpspawn", "/opt/bin/mpspawn", "--env", "WHO=it's me", "--rdzv-endpoint", "10.0.0.1:29400", "--rdzv-id", "job1",
		"--rdzv-conf", "token=" + token + ",lease_ttl=3", "--dry-run", "--max-restarts", "1", "--no-python", "sh", "-c", "echo $RANK"}, &stdout, &stderr)
	conf := "join_timeout=600,last_call_timeout=30,close_timeout=30,lease_ttl=3,connect_timeout=5"
	node := func(host, pos, nproc, gpus string) string {
		remote := "cd " + cwd + " && exec /opt/bin/mpspawn --ssh-node --quiet --rdzv-backend c10d --rdzv-endpoint 10.0.0.1:29400 --rdzv-id job1 --nnodes 2 --node-position " + pos + " --nproc-per-node " + nproc +
			" --rdzv-conf " + conf + " --log-line-prefix-template '[" + host + ":${rank}]: ' --max-restarts 1 --no-python sh -c 'echo $RANK'"
		return "  command: ssh -p 2222 -o BatchMode=yes -o ConnectTimeout=7 " + host + " " + shellQuote(remote) + "\n" +
			"  env: NCCL_DEBUG=INFO\n  env: WHO=it's me\n  env: MPSPAWN_RDZV_TOKEN=<secret, sent on stdin>\n  env: CUDA_VISIBLE_DEVICES=" + gpus + "\n"
	}
	want := "rendezvous job1: c10d at 10.0.0.1:29400 (served by this machine unless --rdzv-endpoint named one)\n" +
		"node 0: a\n" + node("a", "1", "2", "0,1") + "node 1: b\n" + node("b", "2", "1", "0")
	if code != 0 || stdout.String() != want || stderr.Len() != 0 {
		t.Errorf("exit %d, stderr %q, stdout:\n%s\nwant exit 0 and stdout:\n%s", code, stderr.String(), stdout.String(), want)
	}
	if strings.Contains(stdout.String(), "s3cret") {
		t.Errorf("the token shows in the dry run:\n%s", stdout.String())
	}
}

// TestNodePositionFlag: the hidden --node-position a driver gives each
// node is refused, in one line and exit 2, without etcd or c10d, out of
// 1 to --nnodes, and on the driver itself.
func TestNodePositionFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nnodes", "2", "--node-position", "1"}, "mpspawn: error: --node-position goes with --rdzv-backend etcd or c10d (static: give --node-rank)\n"},
		{[]string{"--nnodes", "2", "--rdzv-backend", "etcd", "--rdzv-endpoint", "127.0.0.1:1", "--rdzv-id", "j", "--node-position", "3"}, "mpspawn: error: --node-position 3: want 1 to 2 (--nnodes)\n"},
		{[]string{"--nnodes", "2", "--rdzv-backend", "etcd", "--rdzv-endpoint", "127.0.0.1:1", "--rdzv-id", "j", "--node-position", "0"}, "mpspawn: error: --node-position 0: want 1 to 2 (--nnodes)\n"},
		{[]string{"--hosts", "a,b", "--node-position", "1"}, "mpspawn: error: --node-position cannot go with a host list: the hosts' order gives the node ranks, and the rendezvous the master\n"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append(append([]string{"mpspawn"}, tc.args...), "--dry-run", "--no-python", "true"), &stdout, &stderr)
		if code != 2 || stderr.String() != tc.want || stdout.Len() != 0 {
			t.Errorf("%q: exit %d, stderr %q, stdout %q; want exit 2 and only %q", tc.args, code, stderr.String(), stdout.String(), tc.want)
		}
	}
}
