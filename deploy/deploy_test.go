package deploy

import (
	"bufio"
	"errors"
	"fmt"
	"go/build"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/culvert-dev/culvert/pipelines"
	"github.com/culvert-dev/culvert/router"
)

const (
	k8sDir     = "kubernetes"
	dockerfile = "Dockerfile"

	// Bounds on the shutdown after delivery.shutdown_grace: the engine
	// allows 10s to stop the functions and flush the outputs
	// (internal/engine, drain), the runner 10s to stop the embedded server
	// (internal/runner). terminationGracePeriodSeconds must cover them.
	flushBound          = 10 * time.Second
	embeddedServerBound = 10 * time.Second
)

// object is one decoded Kubernetes object (or kustomization).
type object = map[string]any

// doc is one YAML document of a file under kubernetes/.
type doc struct {
	file string // slash-separated, relative to this directory
	obj  object
}

// readDocs decodes every non-empty YAML document in file.
func readDocs(t *testing.T, file string) []doc {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var docs []doc
	for i := 1; ; i++ {
		var obj object
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", file, i, err)
		}
		if obj != nil {
			docs = append(docs, doc{file: filepath.ToSlash(file), obj: obj})
		}
	}
}

// yamlFiles lists the YAML files under kubernetes/.
func yamlFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(k8sDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if ext := filepath.Ext(p); !d.IsDir() && (ext == ".yaml" || ext == ".yml") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no YAML files under %s", k8sDir)
	}
	return files
}

func isKustomization(file string) bool {
	base := filepath.Base(file)
	return base == "kustomization.yaml" || base == "kustomization.yml"
}

// lookup walks obj along keys (map keys, or "[i]" for list elements) and
// returns what it finds there, or nil.
func lookup(obj any, keys ...string) any {
	for _, k := range keys {
		switch v := obj.(type) {
		case map[string]any:
			obj = v[k]
		case []any:
			var i int
			if _, err := fmt.Sscanf(k, "[%d]", &i); err != nil || i < 0 || i >= len(v) {
				return nil
			}
			obj = v[i]
		default:
			return nil
		}
	}
	return obj
}

func str(obj any, keys ...string) string {
	s, _ := lookup(obj, keys...).(string)
	return s
}

func list(obj any, keys ...string) []any {
	l, _ := lookup(obj, keys...).([]any)
	return l
}

func mapping(obj any, keys ...string) map[string]any {
	m, _ := lookup(obj, keys...).(map[string]any)
	return m
}

func TestManifestsAreObjects(t *testing.T) {
	for _, file := range yamlFiles(t) {
		t.Run(filepath.ToSlash(file), func(t *testing.T) {
			docs := readDocs(t, file)
			if len(docs) == 0 {
				t.Fatal("no YAML document")
			}
			for i, d := range docs {
				if isKustomization(file) {
					if got := str(d.obj, "apiVersion"); got != "kustomize.config.k8s.io/v1beta1" {
						t.Errorf("document %d: apiVersion %q, want kustomize.config.k8s.io/v1beta1", i+1, got)
					}
					if got := str(d.obj, "kind"); got != "Kustomization" {
						t.Errorf("document %d: kind %q, want Kustomization", i+1, got)
					}
					continue
				}
				for _, field := range [][]string{{"apiVersion"}, {"kind"}, {"metadata", "name"}} {
					if str(d.obj, field...) == "" {
						t.Errorf("document %d: no %s", i+1, strings.Join(field, "."))
					}
				}
			}
		})
	}
}

// kustomizationRefs returns what a kustomization refers to, as paths
// relative to its directory.
func kustomizationRefs(k object) []string {
	var refs []string
	for _, key := range []string{"resources", "components", "patchesStrategicMerge"} {
		for _, r := range list(k, key) {
			if s, ok := r.(string); ok {
				refs = append(refs, s)
			}
		}
	}
	for _, p := range list(k, "patches") {
		if s := str(p, "path"); s != "" {
			refs = append(refs, s)
		}
	}
	return refs
}

// TestKustomizations checks that every kustomization refers only to files
// and kustomization directories that exist, and that every manifest is
// listed by some kustomization (none is forgotten).
func TestKustomizations(t *testing.T) {
	files := yamlFiles(t)
	listed := map[string]bool{}
	for _, file := range files {
		if !isKustomization(file) {
			continue
		}
		dir := filepath.Dir(file)
		for _, d := range readDocs(t, file) {
			for _, ref := range kustomizationRefs(d.obj) {
				if strings.Contains(ref, "://") || strings.HasPrefix(ref, "github.com/") {
					t.Errorf("%s: %s: remote bases make builds depend on the network", file, ref)
					continue
				}
				p := filepath.Join(dir, ref)
				fi, err := os.Stat(p)
				switch {
				case err != nil:
					t.Errorf("%s: %s does not exist", file, ref)
				case fi.IsDir():
					if _, err := os.Stat(filepath.Join(p, "kustomization.yaml")); err != nil {
						t.Errorf("%s: directory %s holds no kustomization.yaml", file, ref)
					}
				default:
					listed[filepath.Clean(p)] = true
				}
			}
		}
	}
	for _, file := range files {
		if !isKustomization(file) && !listed[filepath.Clean(file)] {
			t.Errorf("%s is listed by no kustomization", file)
		}
	}
}

// kustomize gathers the objects of the kustomization in dir, following its
// resources like kustomize (without transforming anything).
func kustomize(t *testing.T, dir string) []object {
	t.Helper()
	var objs []object
	for _, k := range readDocs(t, filepath.Join(dir, "kustomization.yaml")) {
		for _, r := range list(k.obj, "resources") {
			p := filepath.Join(dir, r.(string))
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatalf("%s: %v", dir, err)
			}
			if fi.IsDir() {
				objs = append(objs, kustomize(t, p)...)
				continue
			}
			for _, d := range readDocs(t, p) {
				objs = append(objs, d.obj)
			}
		}
	}
	return objs
}

func find(objs []object, kind, name string) object {
	for _, o := range objs {
		if str(o, "kind") == kind && (name == "" || str(o, "metadata", "name") == name) {
			return o
		}
	}
	return nil
}

// checker validates CEL and subject templates with the router, as
// `culvert validate` does.
func checker() pipelines.Checker {
	return pipelines.Checker{
		CEL:            router.CheckCEL,
		Template:       func(s string) error { _, err := router.ParseTemplate(s); return err },
		SubjectPattern: router.CheckSubjectPattern,
	}
}

// standIns are values for variables a workload takes from Secrets.
var standIns = map[string]string{"NATS_URL": "nats://nats.nats.svc:4222"}

// containerEnv is the environment the workload gives the container:
// literal values as they are, values from elsewhere (Secrets, fields) as
// stand-ins, plus HOSTNAME, which the kubelet sets to the pod's name.
func containerEnv(t *testing.T, c any, pod string) func(string) (string, bool) {
	t.Helper()
	env := map[string]string{"HOSTNAME": pod}
	for _, e := range list(c, "env") {
		name := str(e, "name")
		switch {
		case lookup(e, "valueFrom") != nil:
			v, ok := standIns[name]
			if !ok {
				v = "stand-in-for-" + name
			}
			env[name] = v
		default:
			env[name] = str(e, "value") // absent: set and empty, as Kubernetes does
		}
	}
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

// TestWorkloads checks each variant's workload against its pipeline.
func TestWorkloads(t *testing.T) {
	tests := []struct {
		name     string
		dir      string
		kind     string
		embedded bool // the pipeline runs the embedded NATS server
	}{
		{name: "deployment", dir: k8sDir, kind: "Deployment"},
		{name: "embedded", dir: path.Join(k8sDir, "overlays", "embedded"), kind: "StatefulSet", embedded: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := kustomize(t, tt.dir)
			var workloads []string
			for _, o := range objs {
				switch k := str(o, "kind"); k {
				case "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob":
					workloads = append(workloads, k+"/"+str(o, "metadata", "name"))
				}
			}
			if len(workloads) != 1 {
				t.Fatalf("workloads %v, want one %s", workloads, tt.kind)
			}
			w := find(objs, tt.kind, "")
			if w == nil {
				t.Fatalf("no %s; workloads: %v", tt.kind, workloads)
			}
			pod := mapping(w, "spec", "template", "spec")
			containers := list(pod, "containers")
			if len(containers) != 1 {
				t.Fatalf("%d containers, want 1", len(containers))
			}
			c := containers[0]

			replicas, _ := lookup(w, "spec", "replicas").(int)
			switch {
			case tt.embedded && replicas != 1:
				t.Errorf("replicas %d: the embedded server does not scale out, want 1", replicas)
			case !tt.embedded && replicas < 2:
				t.Errorf("replicas %d: want at least 2; replicas share the durable consumer", replicas)
			}
			labels := mapping(w, "spec", "template", "metadata", "labels")
			for k, v := range mapping(w, "spec", "selector", "matchLabels") {
				if labels[k] != v {
					t.Errorf("selector %s=%v does not match the pod labels %v", k, v, labels)
				}
			}
			if pdb := find(objs, "PodDisruptionBudget", ""); pdb != nil {
				for k, v := range mapping(pdb, "spec", "selector", "matchLabels") {
					if labels[k] != v {
						t.Errorf("PodDisruptionBudget selector %s=%v does not match the pod labels", k, v)
					}
				}
			} else if !tt.embedded {
				t.Error("no PodDisruptionBudget")
			}

			// Mounts by path, and what each volume is.
			volumes := map[string]any{}
			for _, v := range list(pod, "volumes") {
				volumes[str(v, "name")] = v
			}
			claims := map[string]bool{}
			for _, vc := range list(w, "spec", "volumeClaimTemplates") {
				claims[str(vc, "metadata", "name")] = true
			}
			mounts := map[string]string{} // mount path -> volume name
			for _, m := range list(c, "volumeMounts") {
				name := str(m, "name")
				if volumes[name] == nil && !claims[name] {
					t.Errorf("volumeMount %s: no volume or claim template %q", str(m, "mountPath"), name)
				}
				mounts[str(m, "mountPath")] = name
			}

			// culvert run <pipeline in the ConfigMap mount>.
			var args []string
			for _, a := range list(c, "args") {
				args = append(args, fmt.Sprint(a))
			}
			if len(args) < 2 || args[0] != "run" {
				t.Fatalf("args %q, want run PIPELINE.yaml ...", args)
			}
			file := args[1]
			vol := volumes[mounts[path.Dir(file)]]
			cmName := str(vol, "configMap", "name")
			if cmName == "" {
				t.Fatalf("args name %s, but %s is not a ConfigMap mount (mounts: %v)", file, path.Dir(file), mounts)
			}
			cm := find(objs, "ConfigMap", cmName)
			if cm == nil {
				t.Fatalf("ConfigMap %s is not among the resources", cmName)
			}
			data := str(cm, "data", path.Base(file))
			if data == "" {
				t.Fatalf("ConfigMap %s has no key %s", cmName, path.Base(file))
			}
			p, err := pipelines.ParseWith(file, []byte(data), containerEnv(t, c, "culvert-0"), checker())
			if err != nil {
				t.Fatalf("pipeline in ConfigMap %s, with the container's environment:\n%v", cmName, err)
			}
			if got := p.Broker.URL == ""; got != tt.embedded {
				t.Errorf("broker.url %q with the container's environment; embedded server: %v, want %v", p.Broker.URL, got, tt.embedded)
			}

			// The embedded server's store is on a persistent volume.
			if tt.embedded {
				dataDir := flagValue(args, "--data-dir")
				if dataDir == "" {
					t.Error("no --data-dir: the embedded server's store would be lost with the pod")
				} else if !claims[mounts[dataDir]] {
					t.Errorf("--data-dir %s is not a volumeClaimTemplate mount (mounts: %v)", dataDir, mounts)
				}
			}

			// SIGTERM drains: Kubernetes must not SIGKILL before it ends.
			tgps, ok := lookup(pod, "terminationGracePeriodSeconds").(int)
			if !ok {
				t.Fatal("no terminationGracePeriodSeconds (the default, 30s, is the default shutdown_grace)")
			}
			need := p.Delivery.ShutdownGrace.Std() + flushBound
			if tt.embedded {
				need += embeddedServerBound
			}
			if got := time.Duration(tgps) * time.Second; got <= need {
				t.Errorf("terminationGracePeriodSeconds %v, want more than %v (shutdown_grace %v plus shutdown bounds)",
					got, need, p.Delivery.ShutdownGrace.Std())
			}

			// The root file system is read-only: TMPDIR must be mounted.
			if tmp, _ := containerEnv(t, c, "")("TMPDIR"); tmp == "" || mounts[tmp] == "" {
				t.Errorf("TMPDIR %q is not a mounted (writable) directory", tmp)
			}

			sa := str(pod, "serviceAccountName")
			if o := find(objs, "ServiceAccount", sa); o == nil {
				t.Errorf("ServiceAccount %q is not among the resources", sa)
			} else if lookup(o, "automountServiceAccountToken") != false {
				t.Errorf("ServiceAccount %s: automountServiceAccountToken is not false", sa)
			}
			if lookup(pod, "automountServiceAccountToken") != false {
				t.Error("pod: automountServiceAccountToken is not false")
			}

			for _, f := range []struct {
				obj  any
				keys []string
				want any
			}{
				{pod, []string{"securityContext", "runAsNonRoot"}, true},
				{pod, []string{"securityContext", "seccompProfile", "type"}, "RuntimeDefault"},
				{c, []string{"securityContext", "runAsNonRoot"}, true},
				{c, []string{"securityContext", "readOnlyRootFilesystem"}, true},
				{c, []string{"securityContext", "allowPrivilegeEscalation"}, false},
				{c, []string{"securityContext", "seccompProfile", "type"}, "RuntimeDefault"},
			} {
				if got := lookup(f.obj, f.keys...); got != f.want {
					t.Errorf("%s: %v, want %v", strings.Join(f.keys, "."), got, f.want)
				}
			}
			if drop := list(c, "securityContext", "capabilities", "drop"); !slices.Contains(drop, any("ALL")) {
				t.Errorf("securityContext.capabilities.drop %v, want ALL", drop)
			}
			for _, r := range []string{"requests", "limits"} {
				for _, res := range []string{"cpu", "memory"} {
					if lookup(c, "resources", r, res) == nil {
						t.Errorf("no resources.%s.%s", r, res)
					}
				}
			}
		})
	}
}

// flagValue returns the value of --name=value or --name value in args.
func flagValue(args []string, name string) string {
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
		if a == name && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// sharedPipeline parses the pipeline of the common ConfigMap.
func sharedPipeline(t *testing.T, env map[string]string) *pipelines.Pipeline {
	t.Helper()
	cm := find(kustomize(t, path.Join(k8sDir, "common")), "ConfigMap", "culvert-pipeline")
	if cm == nil {
		t.Fatal("no ConfigMap culvert-pipeline in common")
	}
	p, err := pipelines.ParseWith("pipeline.yaml", []byte(str(cm, "data", "pipeline.yaml")),
		func(k string) (string, bool) { v, ok := env[k]; return v, ok }, checker())
	if err != nil {
		t.Fatalf("pipeline with %v:\n%v", env, err)
	}
	return p
}

// TestReplicasShareConsumers checks the scaling model: whatever pod a
// replica runs in, it binds the same durable consumers and joins the same
// queue groups, so the broker spreads messages across replicas.
func TestReplicasShareConsumers(t *testing.T) {
	a := sharedPipeline(t, map[string]string{"NATS_URL": standIns["NATS_URL"], "HOSTNAME": "culvert-7d9f-abcde"})
	b := sharedPipeline(t, map[string]string{"NATS_URL": standIns["NATS_URL"], "HOSTNAME": "culvert-7d9f-fghij"})
	for name, in := range a.Inputs {
		other := b.Inputs[name]
		switch {
		case in.JetStream != nil:
			if in.JetStream.Durable != other.JetStream.Durable {
				t.Errorf("input %s: durable %q in one pod, %q in another: replicas would each get every message",
					name, in.JetStream.Durable, other.JetStream.Durable)
			}
		case in.NATS != nil:
			if in.NATS.QueueGroup == "" {
				t.Errorf("input %s: no queue_group: every replica would get every message", name)
			} else if in.NATS.QueueGroup != other.NATS.QueueGroup {
				t.Errorf("input %s: queue group %q in one pod, %q in another", name, in.NATS.QueueGroup, other.NATS.QueueGroup)
			}
		default:
			t.Errorf("input %s: only NATS and JetStream inputs are shared between replicas", name)
		}
	}
}

// TestFunctionsAreInTheImage checks that every function command of the
// pipeline is installed by the Dockerfile. pipelines does not look at
// command paths (the paths exist only in the image), so this is the check.
func TestFunctionsAreInTheImage(t *testing.T) {
	img := readDockerfile(t)
	p := sharedPipeline(t, map[string]string{"NATS_URL": standIns["NATS_URL"]})
	for name, f := range p.Functions {
		t.Run(name, func(t *testing.T) {
			switch {
			case path.IsAbs(f.Command):
				if !img.files[f.Command] {
					t.Errorf("command %s is not installed by the Dockerfile (it installs %v)", f.Command, keys(img.files))
				}
			case strings.Contains(f.Command, "/"):
				t.Errorf("command %s is relative to the pipeline file, which is a ConfigMap mount; use a path in the image", f.Command)
			default: // looked up on PATH: a Debian package of that name, or one of ours
				if !img.packages[f.Command] && !img.files["/usr/local/bin/"+f.Command] {
					t.Errorf("command %s is neither a package the Dockerfile installs (%v) nor one of its binaries", f.Command, keys(img.packages))
				}
			}
		})
	}
}

func keys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// image is what the Dockerfile puts in the runtime image, as far as the
// tests care.
type image struct {
	builder  string          // the builder stage's base image
	files    map[string]bool // executables installed, by absolute path
	packages map[string]bool // Debian packages installed
}

// instructions returns the Dockerfile's instructions, continuation lines
// joined and comments dropped.
func instructions(t *testing.T) [][]string {
	t.Helper()
	f, err := os.Open(dockerfile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out [][]string
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			continue
		}
		more := strings.HasSuffix(line, "\\")
		cur.WriteString(strings.TrimSuffix(line, "\\"))
		cur.WriteByte(' ')
		if !more {
			if fields := strings.Fields(cur.String()); len(fields) > 0 {
				out = append(out, fields)
			}
			cur.Reset()
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func readDockerfile(t *testing.T) image {
	t.Helper()
	img := image{files: map[string]bool{}, packages: map[string]bool{}}
	built := map[string][]string{} // go build -o directory -> binaries
	stage := ""
	for _, in := range instructions(t) {
		switch strings.ToUpper(in[0]) {
		case "FROM":
			stage = ""
			if len(in) >= 4 && strings.EqualFold(in[2], "AS") {
				stage = in[3]
				if img.builder == "" {
					img.builder = in[1]
				}
			}
		case "RUN":
			i := slices.Index(in, "build")
			if i > 0 && strings.HasSuffix(in[i-1], "go") && stage != "" {
				dir := flagValue(in[i:], "-o")
				for _, pkg := range in[i:] {
					if strings.HasPrefix(pkg, "./") {
						built[dir] = append(built[dir], mainPackages(t, pkg)...)
					}
				}
			}
			if i := slices.Index(in, "install"); i > 0 && strings.Contains(in[i-1], "apt-get") {
				for _, a := range in[i+1:] {
					if a == "&&" || a == ";" {
						break
					}
					if !strings.HasPrefix(a, "-") {
						img.packages[a] = true
					}
				}
			}
		case "COPY":
			if stage != "" {
				continue // only the last, unnamed stage is the image
			}
			var from string
			var rest []string
			for _, a := range in[1:] {
				if v, ok := strings.CutPrefix(a, "--from="); ok {
					from = v
				} else if !strings.HasPrefix(a, "--") {
					rest = append(rest, a)
				}
			}
			if len(rest) != 2 {
				t.Fatalf("Dockerfile: %s: want one source and one destination", strings.Join(in, " "))
			}
			src, dst := rest[0], rest[1]
			switch {
			case from != "" && built[src] != nil:
				for _, bin := range built[src] {
					img.files[path.Join(dst, bin)] = true
				}
			case strings.HasSuffix(dst, "/"):
				img.files[path.Join(dst, path.Base(src))] = true
			default:
				img.files[dst] = true
			}
		}
	}
	if len(img.files) == 0 || img.builder == "" {
		t.Fatalf("Dockerfile: found no builder stage or no installed files (%+v)", img)
	}
	return img
}

// mainPackages returns the binary names go build makes of pattern, a
// package path relative to the repository root ("./cmd/culvert",
// "./examples/functions/...").
func mainPackages(t *testing.T, pattern string) []string {
	t.Helper()
	root := filepath.Join("..", filepath.FromSlash(strings.TrimSuffix(pattern, "/...")))
	var dirs []string
	if strings.HasSuffix(pattern, "/...") {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	} else {
		dirs = []string{root}
	}
	var names []string
	for _, dir := range dirs {
		pkg, err := build.ImportDir(dir, 0)
		if err == nil && pkg.Name == "main" {
			names = append(names, filepath.Base(dir))
		}
	}
	if len(names) == 0 {
		t.Fatalf("Dockerfile builds %s, which holds no main package", pattern)
	}
	return names
}

// TestBuilderMatchesGoMod checks that the builder image's Go is the
// release go.mod asks for.
func TestBuilderMatchesGoMod(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	var goVersion string
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "go "); ok {
			goVersion = v
		}
	}
	parts := strings.SplitN(goVersion, ".", 3)
	if len(parts) < 2 {
		t.Fatalf("go.mod: go directive %q", goVersion)
	}
	want := "golang:" + parts[0] + "." + parts[1] + "-"
	if img := readDockerfile(t); !strings.HasPrefix(img.builder, want) {
		t.Errorf("builder image %s, want %s* for go %s in go.mod", img.builder, want, goVersion)
	}
}
