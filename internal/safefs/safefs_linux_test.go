package safefs

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const nobody = 65534

// sharedDir makes a sticky world-writable directory, as /tmp is, and a
// root-only file with a secret, which a link planted by another user
// points to.
func sharedDir(t *testing.T) (shared, secret string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: plants files owned by another user")
	}
	base := t.TempDir()
	shared = filepath.Join(base, "shared")
	if err := os.Mkdir(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o1777); err != nil {
		t.Fatal(err)
	}
	private := filepath.Join(base, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	secret = filepath.Join(private, "secret")
	if err := os.WriteFile(secret, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return shared, secret
}

// plant makes a symbolic link at path to target, owned by another user.
func plant(t *testing.T, target, path string) {
	t.Helper()
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(path, nobody, nobody); err != nil {
		t.Fatal(err)
	}
}

func unchanged(t *testing.T, secret string) {
	t.Helper()
	data, err := os.ReadFile(secret)
	if err != nil || string(data) != "root only\n" {
		t.Errorf("secret = %q, %v; want it unchanged", data, err)
	}
	if st, err := os.Stat(secret); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("secret mode = %v, %v; want 0600", st.Mode(), err)
	}
	ents, _ := os.ReadDir(filepath.Dir(secret))
	if len(ents) != 1 {
		t.Errorf("private dir holds %d entries; want only the secret", len(ents))
	}
}

func TestPlantedFileLink(t *testing.T) {
	shared, secret := sharedDir(t)
	plant(t, secret, filepath.Join(shared, "summary.json"))
	err := WriteFile(filepath.Join(shared, "summary.json"), 0o644, func(w io.Writer) error {
		_, err := io.WriteString(w, "{}\n")
		return err
	})
	var le *LinkError
	if !errors.As(err, &le) || le.Path != filepath.Join(shared, "summary.json") {
		t.Errorf("WriteFile through a planted link = %v; want a *LinkError naming it", err)
	}
	if err := Check(filepath.Join(shared, "summary.json")); !errors.As(err, &le) {
		t.Errorf("Check(planted link) = %v; want a *LinkError", err)
	}
	unchanged(t, secret)
}

func TestPlantedDirLink(t *testing.T) {
	shared, secret := sharedDir(t)
	plant(t, filepath.Dir(secret), filepath.Join(shared, "run"))
	for name, open := range map[string]func() error{
		"MkdirAll(path)": func() error { _, err := MkdirAll(filepath.Join(shared, "run", "attempt_0"), 0o755); return err },
		"Dir.MkdirAll": func() error {
			d, err := OpenDir(shared)
			if err != nil {
				return err
			}
			defer d.Close()
			_, err = d.MkdirAll("run/attempt_0", 0o755)
			return err
		},
	} {
		var le *LinkError
		if err := open(); !errors.As(err, &le) || le.Path != filepath.Join(shared, "run") {
			t.Errorf("%s through a planted link = %v; want a *LinkError naming %s", name, err, filepath.Join(shared, "run"))
		}
	}
	unchanged(t, secret)
}

// A directory another user made in the shared directory is refused: its
// owner could swap what is beneath it.
func TestOthersDir(t *testing.T) {
	shared, _ := sharedDir(t)
	run := filepath.Join(shared, "run")
	if err := os.Mkdir(run, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(run, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	d, err := OpenDir(shared)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var oe *OwnerError
	if _, err := d.MkdirAll("run/attempt_0", 0o755); !errors.As(err, &oe) || oe.UID != nobody {
		t.Errorf("MkdirAll beneath another user's dir = %v; want an *OwnerError with uid %d", err, nobody)
	}
	if _, err := MkdirAll(filepath.Join(run, "x"), 0o755); !errors.As(err, &oe) {
		t.Errorf("MkdirAll(path) through another user's dir = %v; want an *OwnerError", err)
	}
}

// A file planted beneath a directory of ours that others can write: a link
// is refused, and so is another user's file or a hard link to a secret.
func TestPlantedBeneath(t *testing.T) {
	shared, secret := sharedDir(t)
	d, err := MkdirAll(filepath.Join(shared, "run", "0"), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := os.Chmod(d.Name(), 0o1777); err != nil {
		t.Fatal(err)
	}
	plant(t, secret, filepath.Join(d.Name(), "stdout.log"))
	if err := os.Link(secret, filepath.Join(d.Name(), "stderr.log")); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(d.Name(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o666); err != nil {
		t.Fatal(err)
	}
	top, err := OpenDir(shared)
	if err != nil {
		t.Fatal(err)
	}
	defer top.Close()
	for _, tc := range []struct{ rel, want string }{
		{"run/0/stdout.log", "is a symbolic link"},
		{"run/0/stderr.log", "not a file with one link"},
		{"run/0/fifo", "not a regular file"},
	} {
		if f, err := top.Create(tc.rel, 0o666); err == nil || !strings.Contains(err.Error(), tc.want) {
			f.Close()
			t.Errorf("Create(%q) = %v; want %q", tc.rel, err, tc.want)
		}
	}
	unchanged(t, secret)
}

// A plain run: directories and files are made with the modes asked for,
// less the umask; an existing file is truncated; a link the user made
// himself on the way to the named directory is followed.
func TestPlain(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	base := t.TempDir()
	real := filepath.Join(base, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, filepath.Join(base, "logs")); err != nil {
		t.Fatal(err)
	}
	d, err := MkdirAll(filepath.Join(base, "logs", "run"), 0o755)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	sub, err := d.MkdirAll("attempt_0/0", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	sub.Close()
	for range 2 {
		f, err := d.Create("attempt_0/0/stdout.log", 0o666)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("hello\n"); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	path := filepath.Join(real, "run", "attempt_0", "0", "stdout.log")
	if data, err := os.ReadFile(path); string(data) != "hello\n" {
		t.Errorf("stdout.log = %q, %v; want one hello (truncated)", data, err)
	}
	for p, want := range map[string]os.FileMode{path: 0o644, filepath.Dir(path): 0o755 | os.ModeDir} {
		if st, err := os.Stat(p); err != nil || st.Mode() != want {
			t.Errorf("mode of %s = %v, %v; want %v", p, st.Mode(), err, want)
		}
	}
	if err := d.Remove("attempt_0/0/stdout.log"); err != nil {
		t.Errorf("Remove = %v", err)
	}
	if err := d.Remove("attempt_0/0/stdout.log"); err != nil {
		t.Errorf("Remove of a missing file = %v; want nil", err)
	}
}

func TestBelow(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ dir, want os.FileMode }{{0o700, 0o600}, {0o750, 0o660}, {0o755, 0o666}, {0o1777, 0o666}, {0o711, 0o600}} {
		if err := os.Chmod(dir, tc.dir); err != nil {
			t.Fatal(err)
		}
		if got := Below(dir, 0o666); got != tc.want {
			t.Errorf("Below(dir %v, 0666) = %v; want %v", tc.dir, got, tc.want)
		}
	}
}

// A path the user named may be his own link, or a device outside a
// directory others can write; a failed write to a device removes nothing.
func TestNamedFile(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target.json")
	if err := os.Symlink(target, filepath.Join(dir, "summary.json")); err != nil {
		t.Fatal(err)
	}
	write := func(w io.Writer) error { _, err := io.WriteString(w, "{}\n"); return err }
	if err := WriteFile(filepath.Join(dir, "summary.json"), 0o644, write); err != nil {
		t.Fatalf("WriteFile through the user's own link = %v", err)
	}
	if data, err := os.ReadFile(target); string(data) != "{}\n" {
		t.Errorf("target = %q, %v; want {}", data, err)
	}
	if err := WriteFile("/dev/full", 0o644, write); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("WriteFile(/dev/full) = %v; want ENOSPC", err)
	}
	if st, err := os.Stat("/dev/full"); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		t.Errorf("/dev/full after a failed write: %v, %v; want it kept", st, err)
	}
}
