package main

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/mpspawn/mpspawn/internal/safefs"
)

// --log-dir with a host list: each host's node writes its ranks' files in
// a private temporary directory on its own disk (so that hosts sharing a
// file system never write the same files), and tells the driver where on
// its stderr. After the job the driver copies each host's run directory
// into --log-dir/<run-id>/<host>/ over ssh (tar through the session), and
// the host removes its directory once the driver has it all. A host whose
// copy fails keeps its files and gets one warning line saying where.

// logsMark starts the stderr line on which a node names its log directory.
const logsMark = "mpspawn-ssh-logs-"

// logCopyLimit bounds the copy of one host's logs, beyond the ssh timeout.
const logCopyLimit = 2 * time.Minute

// remoteLogDir is the shell text that makes a node's private log directory
// as $d and tells the driver its path, behind the nonce.
func remoteLogDir(nonce string) string {
	return `d=$(mktemp -d "${TMPDIR:-/tmp}/mpspawn-logs.XXXXXX") && echo "` + logsMark + nonce + ` $d" >&2 && `
}

// readLogsLine parses a node's log-directory line; "" when line is not one.
func readLogsLine(line, nonce string) string {
	rest, _ := strings.CutPrefix(line, logsMark+nonce+" ")
	return rest
}

// makeHostsLogDir makes --log-dir/<run-id>, where the hosts' files go,
// before anything starts.
func makeHostsLogDir(logDir, logDirArg, runID string) error {
	base, err := safefs.MkdirAll(logDir, 0o755)
	if err == nil {
		var d *safefs.Dir
		if d, err = base.MkdirAll(runID, 0o755); err == nil {
			d.Close()
		}
		base.Close()
	}
	if err != nil {
		return &setupError{Step: "--log-dir " + logDirArg, Err: err}
	}
	return nil
}

// gatherLogs copies every host's log files into logDir/<run-id>/<host>/,
// at once; a host whose copy fails gets one warning line on w.
func (f *fanout) gatherLogs(w io.Writer, hosts []*sshHost, logDir, runID string) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, h := range hosts {
		if h.logDir == "" {
			continue
		}
		wg.Go(func() {
			if err := f.copyLogs(h, filepath.Join(logDir, runID, h.Host), runID); err != nil {
				mu.Lock()
				fmt.Fprintf(w, "mpspawn: warning: host %s: its log files were not copied here (%s): they are at %s:%s\n",
					h.Host, describe(err), h.Host, path.Join(h.logDir, runID))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

// copyLogs copies h's run directory into dest through tar on an ssh
// session; the host removes its directory when the driver says it has
// everything.
func (f *fanout) copyLogs(h *sshHost, dest, runID string) error {
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout+logCopyLimit)
	defer cancel()
	dir := shellQuote(h.logDir)
	script := "cd " + dir + " && tar -cf - " + shellQuote(runID) + ` && read ok && [ "$ok" = ok ] && cd / && rm -rf ` + dir
	argv := f.sshArgv(h.Host, script)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = time.Second
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	stdin, err1 := cmd.StdinPipe()
	stdout, err2 := cmd.StdoutPipe()
	err := errors.Join(err1, err2)
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		return err
	}
	err = untar(bufio.NewReader(stdout), dest, runID)
	if err == nil {
		_, err = io.WriteString(stdin, "ok\n")
	}
	_ = stdin.Close()
	_, _ = io.Copy(io.Discard, stdout)
	werr := cmd.Wait()
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("no copy within %v", f.timeout+logCopyLimit)
	case cmd.ProcessState != nil && cmd.ProcessState.ExitCode() == 255:
		return fmt.Errorf("ssh failed: %s", lastNonEmpty(stderr.Bytes()))
	case err != nil:
		return err
	case werr != nil:
		return fmt.Errorf("the copy there ended with %v: %s", werr, lastNonEmpty(stderr.Bytes()))
	}
	return nil
}

// errNoArchive is a copy whose session sent no tar archive.
var errNoArchive = errors.New("the host sent no archive")

// untar writes the directories and regular files of the archive on r that
// lie under runID into dest, by package safefs's rules (no link beneath
// dest is followed); anything else in the archive is skipped.
func untar(r io.Reader, dest, runID string) error {
	base, err := safefs.MkdirAll(dest, 0o755)
	if err != nil {
		return err
	}
	defer base.Close()
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF && n == 0 {
			return errNoArchive
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("the archive: %w", err)
		}
		rel, ok := strings.CutPrefix(path.Clean(hdr.Name), runID+"/")
		if !ok || !filepath.IsLocal(rel) {
			continue
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			d, err := base.MkdirAll(rel, 0o755)
			if err != nil {
				return err
			}
			d.Close()
		case tar.TypeReg:
			if err := writeFile(base, rel, fs.FileMode(hdr.Mode)&0o666, tr); err != nil {
				return err
			}
		}
	}
}

// writeFile writes r to rel beneath base, making its directory first.
func writeFile(base *safefs.Dir, rel string, perm fs.FileMode, r io.Reader) error {
	d, err := base.MkdirAll(filepath.Dir(rel), 0o755)
	if err != nil {
		return err
	}
	defer d.Close()
	out, err := d.Create(filepath.Base(rel), perm)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, r)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
