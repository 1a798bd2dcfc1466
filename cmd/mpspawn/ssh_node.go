package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/mpspawn/mpspawn/launcher/job"
)

type jobRank = job.RankSummary

// writeHeaderLine writes h as one line.
func writeHeaderLine(w io.Writer, h nodeHeader) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// startSSHNode is the start of an mpspawn that a driver started over ssh
// (--ssh-node): it reads the header from stdin, sets its environment and
// this node's address (the one the driver reached it by, from
// SSH_CONNECTION), and from then on treats the end of stdin as SIGTERM:
// the driver has stopped the job, or died. It returns the nonce that
// marks the node's summary.
func startSSHNode(stdin io.Reader) (string, error) {
	br := bufio.NewReaderSize(stdin, 64<<10)
	line, err := br.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("--ssh-node: no header on stdin: %w", err)
	}
	var h nodeHeader
	if err := json.Unmarshal([]byte(line), &h); err != nil || h.Nonce == "" {
		return "", fmt.Errorf("--ssh-node: a bad header on stdin")
	}
	for _, kv := range h.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && validEnvName(k) {
			os.Setenv(k, v)
		}
	}
	if f := strings.Fields(os.Getenv("SSH_CONNECTION")); len(f) == 4 && os.Getenv(petVar(fLocalAddr)) == "" {
		os.Setenv(petVar(fLocalAddr), f[2])
	}
	go func() {
		_, _ = io.Copy(io.Discard, br)
		if p, err := os.FindProcess(os.Getpid()); err == nil {
			_ = p.Signal(syscall.SIGTERM)
		}
	}()
	return h.Nonce, nil
}

// sshNodeKey is where run keeps the nonce of --ssh-node, in the app's
// Metadata.
const sshNodeKey = "ssh-node"
