// Package build turns recipes into images: a recipe in Containerfile
// syntax (or the same as YAML) is parsed with the Dockerfile parser Docker
// and BuildKit use, and a Builder runs its RUN steps in build containers on
// any container.Server (drivers/lxc, memcontainer, a remote server through
// its agent), edits the root filesystem for COPY, ADD and WORKDIR itself,
// caches the root filesystem after every step under a content key, and
// stores the result in the server's image store. The same recipe and
// inputs give the same image digest.
package build

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"gopkg.in/yaml.v3"

	ddriver "github.com/musterkit/muster/discovery/driver"
	"github.com/musterkit/muster/errcode"
	"github.com/musterkit/muster/names"
)

// MaxRecipeBytes bounds a recipe's source.
const MaxRecipeBytes = 1 << 20

// Recipe is a parsed recipe: global ARGs, then stages; the last stage is
// the image.
type Recipe struct {
	// Args are the ARG steps before the first FROM, usable in FROM.
	Args   []Step
	Stages []*Stage
}

// Stage is one FROM and the steps after it.
type Stage struct {
	// From is the FROM step: Args[0] is an image in the server's store or
	// an earlier stage's name.
	From Step
	// Name is the stage's AS name, or "".
	Name  string
	Steps []Step
}

// Step is one instruction.
type Step struct {
	// Line is the instruction's first line in the source.
	Line int
	// Op is the instruction in upper case: RUN, COPY, SERVICE...
	Op string
	// Args are its arguments as written (before variable expansion); a
	// shell-form RUN, CMD or ENTRYPOINT has its command as one argument.
	Args []string
	// Exec is set for the exec (JSON) form of RUN, CMD, ENTRYPOINT and
	// HEALTHCHECK CMD.
	Exec bool
	// Flags are its --name=value flags, checked against what Op takes.
	Flags map[string]string
	// Text is the instruction as written on one line.
	Text string
}

// flags lists the flags each instruction takes; an instruction absent
// from it is unknown.
var flags = map[string][]string{
	"FROM": nil, "RUN": nil, "COPY": {"from"}, "ADD": nil, "ENV": nil, "ARG": nil,
	"WORKDIR": nil, "USER": nil, "EXPOSE": nil, "VOLUME": nil, "LABEL": nil,
	"ENTRYPOINT": nil, "CMD": nil, "HEALTHCHECK": {"interval", "timeout", "start-period", "retries"},
	"SERVICE": nil,
}

// lineErr returns an errcode.InvalidArgument error naming line.
func lineErr(line int, format string, args ...any) error {
	return errcode.New(errcode.InvalidArgument, "line %d: %s", line, fmt.Sprintf(format, args...))
}

// Parse reads a recipe in Containerfile syntax and validates it. Errors
// are errcode.InvalidArgument and name the line.
func Parse(r io.Reader) (*Recipe, error) {
	src, err := io.ReadAll(io.LimitReader(r, MaxRecipeBytes+1))
	if err != nil {
		return nil, err
	}
	if len(src) > MaxRecipeBytes {
		return nil, errcode.New(errcode.InvalidArgument, "recipe: longer than %d bytes", MaxRecipeBytes)
	}
	res, err := parser.Parse(bytes.NewReader(src))
	if err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "recipe: %w", err)
	}
	steps := make([]Step, 0, len(res.AST.Children))
	for _, n := range res.AST.Children {
		s, err := nodeStep(n, n.StartLine)
		if err != nil {
			return nil, err
		}
		steps = append(steps, s)
	}
	return assemble(steps)
}

// ParseYAML reads the same recipe as YAML and validates it:
//
//	args: ["VERSION=1"]
//	stages:
//	  - from: base
//	    name: build
//	    steps:
//	      - run: echo hello > /greeting
//	      - copy: app /app
//
// Each step is a one-key map from an instruction to its arguments as a
// Containerfile writes them. Errors name the YAML line.
func ParseYAML(r io.Reader) (*Recipe, error) {
	src, err := io.ReadAll(io.LimitReader(r, MaxRecipeBytes+1))
	if err != nil {
		return nil, err
	}
	if len(src) > MaxRecipeBytes {
		return nil, errcode.New(errcode.InvalidArgument, "recipe: longer than %d bytes", MaxRecipeBytes)
	}
	var doc struct {
		Args   []yaml.Node `yaml:"args"`
		Stages []struct {
			From  yaml.Node   `yaml:"from"`
			Name  string      `yaml:"name"`
			Steps []yaml.Node `yaml:"steps"`
		} `yaml:"stages"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return nil, errcode.New(errcode.InvalidArgument, "recipe: %w", err)
	}
	var steps []Step
	add := func(op string, n *yaml.Node) error {
		if n.Kind != yaml.ScalarNode {
			return lineErr(n.Line, "%s takes a string", op)
		}
		s, err := lineStep(op+" "+n.Value, n.Line)
		if err == nil {
			steps = append(steps, s)
		}
		return err
	}
	for i := range doc.Args {
		if err := add("ARG", &doc.Args[i]); err != nil {
			return nil, err
		}
	}
	for _, st := range doc.Stages {
		from := st.From
		if st.Name != "" {
			from.Value += " AS " + st.Name
		}
		if err := add("FROM", &from); err != nil {
			return nil, err
		}
		for _, n := range st.Steps {
			if n.Kind != yaml.MappingNode || len(n.Content) != 2 {
				return nil, lineErr(n.Line, "a step is a map of one instruction to its arguments")
			}
			if err := add(strings.ToUpper(n.Content[0].Value), n.Content[1]); err != nil {
				return nil, err
			}
		}
	}
	return assemble(steps)
}

// lineStep parses one instruction written on one line, as if at line.
func lineStep(text string, line int) (Step, error) {
	if strings.ContainsAny(text, "\r\n") {
		return Step{}, lineErr(line, "an instruction is one line")
	}
	res, err := parser.Parse(strings.NewReader(text))
	if err != nil {
		return Step{}, lineErr(line, "%v", err)
	}
	if len(res.AST.Children) != 1 {
		return Step{}, lineErr(line, "%q is not one instruction", text)
	}
	return nodeStep(res.AST.Children[0], line)
}

// nodeStep converts a parser node and checks its instruction and flags.
func nodeStep(n *parser.Node, line int) (Step, error) {
	s := Step{Line: line, Op: strings.ToUpper(n.Value), Exec: n.Attributes["json"], Text: n.Original}
	allowed, ok := flags[s.Op]
	if !ok {
		return s, lineErr(line, "unknown instruction %s", s.Op)
	}
	for _, f := range n.Flags {
		k, v, _ := strings.Cut(strings.TrimPrefix(f, "--"), "=")
		if !slices.Contains(allowed, k) {
			return s, lineErr(line, "%s does not take the flag %s", s.Op, f)
		}
		if s.Flags == nil {
			s.Flags = map[string]string{}
		}
		s.Flags[k] = v
	}
	if s.Op == "SERVICE" { // ours: the parser keeps no arguments of an instruction it does not know
		s.Args = strings.Fields(n.Original)[1:]
	} else {
		for a := n.Next; a != nil; a = a.Next {
			s.Args = append(s.Args, a.Value)
		}
	}
	return s, checkStep(&s)
}

// checkStep checks what can be checked before variables are expanded.
func checkStep(s *Step) error {
	need := func(lo, hi int) error {
		if len(s.Args) < lo || hi >= 0 && len(s.Args) > hi {
			return lineErr(s.Line, "%s takes %s", s.Op, argCount(lo, hi))
		}
		return nil
	}
	switch s.Op {
	case "FROM":
		if len(s.Args) == 3 && strings.EqualFold(s.Args[1], "AS") {
			return names.Label(s.Args[2])
		}
		return need(1, 1)
	case "COPY", "ADD":
		return need(2, -1)
	case "WORKDIR", "USER", "ARG":
		return need(1, 1)
	case "RUN", "ENTRYPOINT", "CMD", "EXPOSE", "VOLUME", "ENV", "LABEL":
		return need(1, -1)
	case "HEALTHCHECK":
		_, err := healthcheck(s)
		return err
	case "SERVICE":
		if strings.Contains(s.Text, "$") {
			return need(1, -1)
		}
		_, err := service(s.Line, s.Args)
		return err
	}
	return nil
}

func argCount(lo, hi int) string {
	switch {
	case hi < 0:
		return fmt.Sprintf("at least %d arguments", lo)
	case lo == hi:
		return fmt.Sprintf("%d argument(s)", lo)
	}
	return fmt.Sprintf("%d to %d arguments", lo, hi)
}

// assemble groups steps into stages and checks their references.
func assemble(steps []Step) (*Recipe, error) {
	r := &Recipe{}
	seen := map[string]bool{}
	for _, s := range steps {
		switch {
		case s.Op == "FROM":
			st := &Stage{From: s}
			if len(s.Args) == 3 {
				st.Name = s.Args[2]
				if seen[st.Name] {
					return nil, lineErr(s.Line, "stage %q is named twice", st.Name)
				}
				seen[st.Name] = true
			}
			r.Stages = append(r.Stages, st)
		case len(r.Stages) == 0 && s.Op == "ARG":
			r.Args = append(r.Args, s)
		case len(r.Stages) == 0:
			return nil, lineErr(s.Line, "%s before the first FROM", s.Op)
		default:
			st := r.Stages[len(r.Stages)-1]
			if from, ok := s.Flags["from"]; ok && !seen[from] && !isIndex(from, len(r.Stages)-1) {
				return nil, lineErr(s.Line, "COPY --from=%s names no earlier stage", from)
			}
			st.Steps = append(st.Steps, s)
		}
	}
	if len(r.Stages) == 0 {
		return nil, errcode.New(errcode.InvalidArgument, "recipe: no FROM")
	}
	return r, nil
}

// isIndex reports whether s is the index of one of the n stages before.
func isIndex(s string, n int) bool {
	i, err := strconv.Atoi(s)
	return err == nil && i >= 0 && i < n
}

// Service is what a container of the image publishes to discovery:
//
//	SERVICE name port=PORT [tags=a,b] [check=tcp|http:/path|ttl:DURATION] [interval=DURATION]
type Service struct {
	Name  string         `json:"name"`
	Port  uint16         `json:"port"`
	Tags  []string       `json:"tags,omitempty"`
	Check *ddriver.Check `json:"check,omitempty"`
}

// service parses SERVICE's arguments and validates them as discovery does.
func service(line int, args []string) (*Service, error) {
	if len(args) == 0 {
		return nil, lineErr(line, "SERVICE takes a name")
	}
	sv := &Service{Name: args[0]}
	var interval time.Duration
	for _, a := range args[1:] {
		k, v, ok := strings.Cut(a, "=")
		var err error
		switch {
		case !ok:
			err = fmt.Errorf("%q is not key=value", a)
		case k == "port":
			var p uint64
			p, err = strconv.ParseUint(v, 10, 16)
			sv.Port = uint16(p)
		case k == "tags":
			sv.Tags = strings.Split(v, ",")
		case k == "interval":
			interval, err = time.ParseDuration(v)
		case k == "check":
			typ, arg, _ := strings.Cut(v, ":")
			sv.Check = &ddriver.Check{Type: ddriver.CheckType(typ)}
			switch sv.Check.Type {
			case ddriver.HTTPCheck:
				sv.Check.Path = arg
			case ddriver.TTLCheck:
				sv.Check.TTL, err = time.ParseDuration(arg)
			}
		default:
			err = fmt.Errorf("unknown key %q (port, tags, check, interval)", k)
		}
		if err != nil {
			return nil, lineErr(line, "SERVICE: %v", err)
		}
	}
	if sv.Check != nil && sv.Check.Type != ddriver.TTLCheck {
		sv.Check.Interval = interval
	}
	in := ddriver.Instance{ID: sv.Name, Service: sv.Name, Address: "127.0.0.1", Port: sv.Port, Tags: sv.Tags, Check: sv.Check}
	if err := in.Validate(); err != nil {
		return nil, lineErr(line, "SERVICE: %v", err)
	}
	if sv.Port == 0 {
		return nil, lineErr(line, "SERVICE %s: port=PORT is required", sv.Name)
	}
	return sv, nil
}

// Healthcheck is HEALTHCHECK: a command run in the container.
type Healthcheck struct {
	// Test is the command (exec form) or ["/bin/sh", "-c", command].
	Test        []string      `json:"test"`
	Interval    time.Duration `json:"interval,omitempty"`
	Timeout     time.Duration `json:"timeout,omitempty"`
	StartPeriod time.Duration `json:"startPeriod,omitempty"`
	Retries     int           `json:"retries,omitempty"`
}

// healthcheck parses HEALTHCHECK; nil for HEALTHCHECK NONE.
func healthcheck(s *Step) (*Healthcheck, error) {
	if len(s.Args) == 1 && strings.EqualFold(s.Args[0], "NONE") {
		return nil, nil
	}
	if len(s.Args) < 2 || !strings.EqualFold(s.Args[0], "CMD") {
		return nil, lineErr(s.Line, "HEALTHCHECK takes NONE or CMD command")
	}
	h := &Healthcheck{Test: command(s.Args[1:], s.Exec)}
	for k, v := range s.Flags {
		var err error
		switch k {
		case "interval":
			h.Interval, err = time.ParseDuration(v)
		case "timeout":
			h.Timeout, err = time.ParseDuration(v)
		case "start-period":
			h.StartPeriod, err = time.ParseDuration(v)
		case "retries":
			h.Retries, err = strconv.Atoi(v)
		}
		if err != nil {
			return nil, lineErr(s.Line, "HEALTHCHECK --%s: %v", k, err)
		}
	}
	return h, nil
}

// command returns the argv of an exec-form command, or runs a shell-form
// one with /bin/sh -c.
func command(args []string, exec bool) []string {
	if exec {
		return slices.Clone(args)
	}
	return []string{"/bin/sh", "-c", strings.Join(args, " ")}
}
