//go:build linux

package main

import (
	"fmt"
	"os"
	"strconv"
	"testing"

	"github.com/mpspawn/mpspawn/internal/slurmtest"
	"github.com/rogpeppe/go-internal/testscript"
)

// TestSlurmCluster runs the scripts of testdata/slurm against a real
// two-node SLURM cluster on this host, started here and stopped by pid at
// the end. It skips when Slurm is not installed, except under CI=true.
func TestSlurmCluster(t *testing.T) {
	cl := slurmtest.Start(t)
	params := scriptParams(t, "testdata/slurm", map[string]string{"SLURM_CONF": cl.Conf})
	condition := params.Condition
	params.Condition = func(cond string) (bool, error) {
		if cond != "slurmgpus" { // the cluster has fake GPUs for --gres=gpu:N
			return condition(cond)
		}
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci && cl.GPUs == 0 {
			return false, fmt.Errorf("slurmgpus condition: CI=true and the cluster has no fake GPUs: %v", cl.GPUsErr)
		}
		return cl.GPUs > 0, nil
	}
	testscript.Run(t, params)
}
