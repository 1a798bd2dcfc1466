package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
)

// mpspawnCmd returns a command that runs the test binary as mpspawn (TestMain).
func mpspawnCmd(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	bin := t.TempDir()
	if err := os.Symlink(os.Args[0], filepath.Join(bin, "mpspawn")); err != nil {
		t.Fatal(err)
	}
	return exec.Command(filepath.Join(bin, "mpspawn"), args...)
}

// exitOf runs cmd and returns its exit code and stderr.
func exitOf(t *testing.T, cmd *exec.Cmd) (int, string) {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stderr.String()
	}
	t.Fatal(err)
	return -1, ""
}

// TestPlantedLinks runs mpspawn as root with its files in a sticky
// world-writable directory where another user (uid 65534) planted links
// to a root-only file or directory: mpspawn refuses with one line, exit 2,
// and nothing is written through the links.
func TestPlantedLinks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: plants links owned by another user")
	}
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, shared, secret string) (link string)
		args  func(shared string) []string
		line  string // the message after "mpspawn: error: ", with LINK for the link
	}{{
		name: "run-id dir",
		plant: func(t *testing.T, shared, secret string) string {
			return plantLink(t, filepath.Dir(secret), filepath.Join(shared, "run"))
		},
		args: func(shared string) []string { return []string{"--log-dir", shared, "--run-id", "run", "--tee", "3"} },
		line: "--log-dir SHARED: LINK is a symbolic link mpspawn did not make; refusing to write through it",
	}, {
		name: "stdout.log",
		plant: func(t *testing.T, shared, secret string) string {
			// A rank directory of an earlier run, left writable by all.
			dir := filepath.Join(shared, "run", "attempt_0", "0")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, 0o1777); err != nil {
				t.Fatal(err)
			}
			return plantLink(t, secret, filepath.Join(dir, "stdout.log"))
		},
		args: func(shared string) []string { return []string{"--log-dir", shared, "--run-id", "run", "--tee", "3"} },
		line: "LINK is a symbolic link mpspawn did not make; refusing to write through it",
	}, {
		name: "summary.json",
		plant: func(t *testing.T, shared, secret string) string {
			return plantLink(t, secret, filepath.Join(shared, "summary.json"))
		},
		args: func(shared string) []string { return []string{"--summary-json", filepath.Join(shared, "summary.json")} },
		line: "--summary-json LINK: LINK is a symbolic link mpspawn did not make; refusing to write through it",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			shared, secret := sharedWithSecret(t)
			link := tc.plant(t, shared, secret)
			started := filepath.Join(t.TempDir(), "started")
			args := append(tc.args(shared), "--no-python", "sh", "-c", "touch "+started+"; echo out")
			code, stderr := exitOf(t, mpspawnCmd(t, args...))
			want := "mpspawn: error: " + regexp.MustCompile("LINK|SHARED").ReplaceAllStringFunc(tc.line, func(s string) string {
				if s == "LINK" {
					return link
				}
				return shared
			}) + "\n"
			if code != 2 || stderr != want {
				t.Errorf("mpspawn %q = exit %d, stderr %q; want exit 2, %q", args, code, stderr, want)
			}
			if _, err := os.Stat(started); err == nil {
				t.Errorf("a rank started")
			}
			secretUnchanged(t, secret)
		})
	}
}

// A plain run in a directory of the user's own: the logs honour the
// umask, and the summary is no more readable than the log directory.
func TestFileModes(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	for _, tc := range []struct {
		logDir, summary os.FileMode
	}{{0o755, 0o644}, {0o700, 0o600}} {
		dir := t.TempDir()
		logs := filepath.Join(dir, "logs")
		if err := os.Mkdir(logs, tc.logDir); err != nil {
			t.Fatal(err)
		}
		sum := filepath.Join(dir, "summary.json")
		args := []string{"--log-dir", logs, "--run-id", "r", "--tee", "3", "--summary-json", sum, "--no-python", "sh", "-c", "echo out; echo err >&2; exit 3"}
		if code, stderr := exitOf(t, mpspawnCmd(t, args...)); code != 3 {
			t.Fatalf("mpspawn %q = exit %d (%s); want 3", args, code, stderr)
		}
		for path, want := range map[string]os.FileMode{
			filepath.Join(logs, "r"):                                 os.ModeDir | 0o755,
			filepath.Join(logs, "r", "attempt_0", "0"):               os.ModeDir | 0o755,
			filepath.Join(logs, "r", "attempt_0", "0", "stdout.log"): 0o644,
			filepath.Join(logs, "r", "attempt_0", "0", "stderr.log"): 0o644,
			sum: tc.summary,
		} {
			if st, err := os.Stat(path); err != nil || st.Mode() != want {
				t.Errorf("log dir %v: mode of %s = %v, %v; want %v", tc.logDir, path, st.Mode(), err, want)
			}
		}
		if data, err := os.ReadFile(filepath.Join(logs, "r", "attempt_0", "0", "stderr.log")); string(data) != "err\n" {
			t.Errorf("stderr.log = %q, %v; want err", data, err)
		}
	}
}

// sharedWithSecret makes a sticky world-writable directory, as /tmp is,
// and beside it a private directory holding a root-only secret file.
func sharedWithSecret(t *testing.T) (shared, secret string) {
	t.Helper()
	base := t.TempDir()
	shared = filepath.Join(base, "shared")
	private := filepath.Join(base, "private")
	secret = filepath.Join(private, "secret")
	if err := os.Mkdir(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return shared, secret
}

// plantLink makes a link at path to target owned by uid 65534, as if that
// user had made it.
func plantLink(t *testing.T, target, path string) string {
	t.Helper()
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	return path
}

// secretUnchanged checks the secret's content and mode, and that nothing
// else appeared beside it.
func secretUnchanged(t *testing.T, secret string) {
	t.Helper()
	if data, err := os.ReadFile(secret); err != nil || string(data) != "root only\n" {
		t.Errorf("secret = %q, %v; want it unchanged", data, err)
	}
	if st, err := os.Stat(secret); err != nil || st.Mode() != 0o600 {
		t.Errorf("secret's mode = %v, %v; want 0600", st.Mode(), err)
	}
	if ents, err := os.ReadDir(filepath.Dir(secret)); err != nil || len(ents) != 1 {
		t.Errorf("private dir holds %d entries (%v); want the secret alone", len(ents), err)
	}
}
