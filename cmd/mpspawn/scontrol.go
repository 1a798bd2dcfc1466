package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/rendezvous"
)

// scontrolError is a run of scontrol that failed; Stderr is what it said.
type scontrolError struct {
	Args   []string
	Stderr string
	Err    error
}

func (e *scontrolError) Error() string {
	msg := fmt.Sprintf("mpspawn: scontrol %s: %v", strings.Join(e.Args, " "), e.Err)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *scontrolError) Unwrap() error { return e.Err }

// scontrolNodeAddr asks Slurm for node's NodeAddr (scontrol show node), for
// rendezvous.Slurm.MasterAddr: the rendezvous reads Slurm's answer, and
// runs no program itself.
func scontrolNodeAddr(ctx context.Context, node string) (string, error) {
	args := []string{"--oneliner", "show", "node", node}
	cmd := exec.CommandContext(ctx, "scontrol", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second
	out, err := cmd.Output()
	if err != nil {
		return "", &scontrolError{Args: args, Stderr: strings.TrimSpace(stderr.String()), Err: err}
	}
	return rendezvous.ParseNodeAddr(out)
}
