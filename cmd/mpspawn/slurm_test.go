//go:build linux

package main

import (
	"testing"

	"github.com/mpspawn/mpspawn/internal/slurmtest"
	"github.com/rogpeppe/go-internal/testscript"
)

// TestSlurmCluster runs the scripts of testdata/slurm against a real
// two-node SLURM cluster on this host, started here and stopped by pid at
// the end. It skips when Slurm is not installed, except under CI=true.
func TestSlurmCluster(t *testing.T) {
	cl := slurmtest.Start(t)
	testscript.Run(t, scriptParams(t, "testdata/slurm", map[string]string{"SLURM_CONF": cl.Conf}))
}
