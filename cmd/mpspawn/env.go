package main

import (
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
)

// Every launcher flag also reads PET_<FLAG> from the environment, as
// torchrun does (PET_NPROC_PER_NODE, PET_NNODES, PET_MASTER_ADDR, ...), so
// that a Kubeflow PyTorchJob or Trainer pod, which passes its settings that
// way, runs `mpspawn train.py` unchanged. A value is taken from, in order:
// the command line, PET_<FLAG>, what a scheduler says (see schedule.go),
// the flag's default.

// petVar is the environment variable that flag name reads:
// "nproc-per-node" reads PET_NPROC_PER_NODE.
func petVar(name string) string {
	return "PET_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// withPET adds PET_<FLAG> to the environment variables of every flag in fs
// but --version (an action, not a setting), after the ones a flag reads
// already. It sets the EnvVars field that every urfave/cli flag type has,
// so a flag added later gets it without a word here.
func withPET(fs []cli.Flag) []cli.Flag {
	for _, f := range fs {
		name := f.Names()[0]
		if name == fVersion {
			continue
		}
		v := reflect.ValueOf(f).Elem().FieldByName("EnvVars")
		if !v.IsValid() || v.Type() != reflect.TypeOf([]string(nil)) {
			panic(fmt.Sprintf("mpspawn: flag --%s (%T) has no EnvVars to add %s to", name, f, petVar(name)))
		}
		v.Set(reflect.Append(v, reflect.ValueOf(petVar(name))))
	}
	return fs
}

// given says where the value of flag name came from when c.IsSet(name):
// "PET_NNODES=3" when the environment gave it, else "--nnodes 3" (or
// "--standalone" for a bool flag).
func given(c *cli.Context, name string) string {
	value := fmt.Sprint(c.Value(name))
	if env, ok := os.LookupEnv(petVar(name)); ok && !onCommandLine(c, name) {
		return petVar(name) + "=" + env
	}
	if b, ok := c.Value(name).(bool); ok && b {
		return "--" + name
	}
	return "--" + name + " " + value
}

// argsKey is where run keeps the command line, in the app's Metadata, for
// onCommandLine.
const argsKey = "args"

// onCommandLine reports whether flag name was given on the command line
// (up to the program), in either spelling (--node-rank, --node_rank).
func onCommandLine(c *cli.Context, name string) bool {
	args, _ := c.App.Metadata[argsKey].([]string)
	valued := flagNames(c.App.Flags)
	for i := 1; i < len(args); i++ {
		a := args[i]
		if a == "--" || !strings.HasPrefix(a, "-") || a == "-" {
			return false
		}
		flag, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		flag = strings.ReplaceAll(flag, "_", "-")
		if flag == name {
			return true
		}
		if valued[flag] && !hasValue {
			i++
		}
	}
	return false
}

// checkPET finds a PET_* value that is not of its flag's type, before the
// flags are read, and words it for people: "PET_NODE_RANK="first": want a
// whole number (it sets --node-rank)".
func checkPET(fs []cli.Flag) error {
	for _, f := range fs {
		name := f.Names()[0]
		v, ok := os.LookupEnv(petVar(name))
		if !ok || v == "" {
			continue
		}
		var err error
		want := ""
		switch f := f.(type) {
		case *cli.IntFlag:
			_, err = strconv.ParseInt(v, f.Base, 64)
			want = "a whole number"
		case *cli.BoolFlag:
			_, err = strconv.ParseBool(v)
			want = "true or false (or 1 or 0)"
		}
		if err != nil {
			return usagef("%s=%q: want %s (it sets --%s)", petVar(name), v, want, name)
		}
	}
	return nil
}
