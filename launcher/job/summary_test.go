package job

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/rendezvous"
)

func TestStderrExcerpt(t *testing.T) {
	many := make([]string, 30)
	for i := range many {
		many[i] = "line"
	}
	tests := []struct {
		name, tail string
		want       int    // lines
		first      string // the excerpt's first line
	}{
		{"empty", "\n\n", 0, ""},
		{"short", "a\nb\n\n", 2, "a"},
		{"last 10", strings.Join(many, "\n"), 10, "line"},
		{"traceback", "noise\nTraceback (most recent call last):\n  File \"x.py\", line 1\nValueError: x\n", 3, "Traceback (most recent call last):"},
		{"last traceback", "Traceback (most recent call last):\nA\nTraceback (most recent call last):\nB", 2, "Traceback (most recent call last):"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := stderrExcerpt(tt.tail)
			if len(got) != tt.want || (tt.want > 0 && got[0] != tt.first) {
				t.Errorf("stderrExcerpt(%q) = %q; want %d lines from %q", tt.tail, got, tt.want, tt.first)
			}
		})
	}
}

// TestSummaryText: a failure without an error file shows its stderr; exit
// codes are torchrun's numbers with the signal's name; an interrupted job
// says by what, and no section is empty.
func TestSummaryText(t *testing.T) {
	res := &launcher.Result{
		Ranks: []launcher.RankResult{
			{Rank: 0, ExitCode: -1, Signal: syscall.SIGTERM, Stopped: true, Note: "slow"},
			{Rank: 1, LocalRank: 1, ExitCode: 1, Stderr: "Traceback (most recent call last):\nModuleNotFoundError: No module named 'torch'"},
		},
		RootCause: 1, Failures: []int{1, 0},
	}
	var b bytes.Buffer
	s := Summarize(res, "h", "r")
	s.Interpreter = "/usr/bin/python3 (python3 on PATH)"
	s.WriteText(&b, "train.py")
	for _, want := range []string{
		"  interpreter: /usr/bin/python3 (python3 on PATH)\n",
		"  error_file: <N/A>\n  message   : ModuleNotFoundError: No module named 'torch'\n  stderr    : (last 2 lines)\n",
		"[0]: local_rank 0, pid 0, exitcode -15 (SIGTERM)\n  note      : slow\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("WriteText = %q; want it to contain %q", b.String(), want)
		}
	}

	res = &launcher.Result{Ranks: []launcher.RankResult{{Rank: 0}}, RootCause: -1, Failures: []int{}, Interrupted: syscall.SIGINT}
	b.Reset()
	Summarize(res, "h", "r").WriteText(&b, "train.py")
	want := "============================================================\ntrain.py FAILED\n  mpspawn got SIGINT and stopped the ranks\n============================================================\n"
	if b.String() != want {
		t.Errorf("WriteText (interrupted) = %q; want %q", b.String(), want)
	}
}

func TestWriteRootCause(t *testing.T) {
	ended := time.Unix(1700000000, 0)
	tests := []struct {
		name     string
		r        launcher.RankResult
		msg, tb  string
		code     int
		unixTime string
	}{
		{"error file", launcher.RankResult{ExitCode: 1, Ended: ended, ErrorFile: &launcher.ErrorFile{Message: "RuntimeError: x", Traceback: "Traceback ...", Time: time.Unix(1600000000, 0)}},
			"RuntimeError: x", "Traceback ...", 1, "1600000000"},
		{"stderr", launcher.RankResult{ExitCode: 1, Ended: ended, Stderr: "Traceback (most recent call last):\nValueError: y"},
			"ValueError: y", "Traceback (most recent call last):\nValueError: y\n", 1, "1700000000"},
		{"signal", launcher.RankResult{Rank: 3, LocalRank: 1, ExitCode: -1, Signal: syscall.SIGKILL, Ended: ended},
			"rank 3 (local_rank 1) failed: signal 9 (SIGKILL)", "", -9, "1700000000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "error.json")
			if err := WriteRootCause(path, &tt.r); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var got struct {
				Message struct {
					Message   string `json:"message"`
					ErrorCode int    `json:"errorCode"`
					ExtraInfo struct {
						PyCallstack string `json:"py_callstack"`
						Timestamp   string `json:"timestamp"`
					} `json:"extraInfo"`
				} `json:"message"`
			}
			if err := json.Unmarshal(data, &got); err != nil {
				t.Fatal(err)
			}
			m := got.Message
			if m.Message != tt.msg || m.ExtraInfo.PyCallstack != tt.tb || m.ErrorCode != tt.code || m.ExtraInfo.Timestamp != tt.unixTime {
				t.Errorf("WriteRootCause(%s) wrote %s; want message %q, py_callstack %q, errorCode %d, timestamp %s", tt.name, data, tt.msg, tt.tb, tt.code, tt.unixTime)
			}
			// What torchrun's and mpspawn's readers make of it.
			ef, err := launcher.ParseErrorFile(data)
			if err != nil || ef.Message != tt.msg {
				t.Errorf("launcher.ParseErrorFile(%s) = %+v, %v; want message %q", data, ef, err, tt.msg)
			}
		})
	}
}

// TestSignalledAndRemoteRanks: a rank a signal ended has exit code -N in
// the JSON as in the text ("-9 (SIGKILL)"), here or on another node; a
// rank of another node says where its cost is, not "wall 0.0 s".
func TestSignalledAndRemoteRanks(t *testing.T) {
	local := Summarize(&launcher.Result{RootCause: 0, Ranks: []launcher.RankResult{{Rank: 0, Pid: 7, ExitCode: -1, Signal: syscall.SIGKILL}}}, "h0", "run")
	remote := FailureSummary(rendezvous.Failure{Rank: 3, LocalRank: 1, NodeRank: 1, Host: "h1", Addr: "10.0.0.2", Pid: 9, ExitCode: -1, Signal: int(syscall.SIGKILL), Message: "killed"})
	for name, r := range map[string]RankSummary{"local": local.Ranks[0], "remote": remote} {
		if r.ExitCode != -9 || r.Signal != "SIGKILL" || exitText(r) != "-9 (SIGKILL)" {
			t.Errorf("%s: exit code %d, signal %q, text %q; want -9, SIGKILL, -9 (SIGKILL)", name, r.ExitCode, r.Signal, exitText(r))
		}
	}
	var b strings.Builder
	writeRank(&b, remote)
	if !strings.Contains(b.String(), "  cost      : on node 1 (its own summary has it)\n") || strings.Contains(b.String(), "wall 0.0 s") {
		t.Errorf("a remote rank's text:\n%s\nwant its cost to say on node 1, not wall 0.0 s", b.String())
	}
	if local.Ranks[0].RemoteNode != nil || remote.RemoteNode == nil || *remote.RemoteNode != 1 {
		t.Errorf("RemoteNode: local %v, remote %v; want nil and 1", local.Ranks[0].RemoteNode, remote.RemoteNode)
	}
}
