// Runs Ladder's Argo CD health check and actions
// (resource_customizations/ladder.dev/ScalingPhase) in gopher-lua, the Lua
// interpreter Argo CD itself embeds, the way Argo CD calls them: the object
// as the global `obj`, health.lua returning {status, message}, discovery.lua
// returning the actions, each action.lua returning the changed object.
//
// Two sources of objects:
//   - Argo CD's own test layout: health_test.yaml and actions/action_test.yaml
//     next to the scripts, with testdata/*.yaml (TestHealthTestdata,
//     TestActionTestdata);
//   - real ScalingPhases on the local control plane, put in each state by
//     writing their status through the status subresource, read back with
//     kubectl (TestLiveObjects; needs KUBECONFIG and LADDER_ROOT).
package argocd

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

const dir = "resource_customizations/ladder.dev/ScalingPhase"

// newState opens the libraries Argo CD opens for resource scripts.
func newState() *lua.LState {
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
	} {
		L.Push(L.NewFunction(lib.fn))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	return L
}

func toLua(L *lua.LState, v interface{}) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case float64:
		return lua.LNumber(x)
	case int64:
		return lua.LNumber(x)
	case string:
		return lua.LString(x)
	case []interface{}:
		t := L.NewTable()
		for _, e := range x {
			t.Append(toLua(L, e))
		}
		return t
	case map[string]interface{}:
		t := L.NewTable()
		for k, e := range x {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	default:
		panic(fmt.Sprintf("cannot pass %T to Lua", v))
	}
}

func fromLua(v lua.LValue) interface{} {
	switch x := v.(type) {
	case *lua.LNilType:
		return nil
	case lua.LBool:
		return bool(x)
	case lua.LNumber:
		return float64(x)
	case lua.LString:
		return string(x)
	case *lua.LTable:
		if n := x.MaxN(); n > 0 {
			out := make([]interface{}, 0, n)
			for i := 1; i <= n; i++ {
				out = append(out, fromLua(x.RawGetInt(i)))
			}
			return out
		}
		out := map[string]interface{}{}
		x.ForEach(func(k, e lua.LValue) { out[k.String()] = fromLua(e) })
		return out
	default:
		panic(fmt.Sprintf("unexpected Lua value %s", v.Type()))
	}
}

// runScript runs a script with `obj` set and returns what it returns.
func runScript(t *testing.T, path string, obj map[string]interface{}) (interface{}, error) {
	t.Helper()
	L := newState()
	defer L.Close()
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoFile(path); err != nil {
		return nil, err
	}
	return fromLua(L.Get(-1)), nil
}

type health struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func healthOf(t *testing.T, obj map[string]interface{}) health {
	t.Helper()
	out, err := runScript(t, filepath.Join(dir, "health.lua"), obj)
	if err != nil {
		t.Fatalf("health.lua: %v", err)
	}
	m, ok := out.(map[string]interface{})
	if !ok {
		t.Fatalf("health.lua returned %#v", out)
	}
	h := health{Status: fmt.Sprint(m["status"])}
	if s, ok := m["message"].(string); ok {
		h.Message = s
	}
	return h
}

func readYAML(t *testing.T, path string, into interface{}) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// TestHealthTestdata: health_test.yaml in Argo CD's layout.
func TestHealthTestdata(t *testing.T) {
	var spec struct {
		Tests []struct {
			HealthStatus health `json:"healthStatus"`
			InputPath    string `json:"inputPath"`
		} `json:"tests"`
	}
	readYAML(t, filepath.Join(dir, "health_test.yaml"), &spec)
	if len(spec.Tests) == 0 {
		t.Fatal("health_test.yaml has no tests")
	}
	seen := map[string]bool{}
	for _, tc := range spec.Tests {
		var obj map[string]interface{}
		readYAML(t, filepath.Join(dir, tc.InputPath), &obj)
		got := healthOf(t, obj)
		if got != tc.HealthStatus {
			t.Errorf("%s: got %+v, want %+v", tc.InputPath, got, tc.HealthStatus)
		}
		seen[got.Status] = true
	}
	for _, s := range []string{"Healthy", "Progressing", "Degraded", "Suspended"} {
		if !seen[s] {
			t.Errorf("no test case yields %s", s)
		}
	}
}

// TestActionTestdata: actions/action_test.yaml in Argo CD's layout.
func TestActionTestdata(t *testing.T) {
	var spec struct {
		DiscoveryTests []struct {
			InputPath string `json:"inputPath"`
			Result    []struct {
				Name     string `json:"name"`
				Disabled bool   `json:"disabled"`
			} `json:"result"`
		} `json:"discoveryTests"`
		ActionTests []struct {
			Action             string `json:"action"`
			InputPath          string `json:"inputPath"`
			ExpectedOutputPath string `json:"expectedOutputPath"`
			ExpectedErrorMatch string `json:"expectedErrorMessage"`
		} `json:"actionTests"`
	}
	actions := filepath.Join(dir, "actions")
	readYAML(t, filepath.Join(actions, "action_test.yaml"), &spec)
	if len(spec.DiscoveryTests) == 0 || len(spec.ActionTests) == 0 {
		t.Fatal("action_test.yaml needs discovery and action tests")
	}
	for _, tc := range spec.DiscoveryTests {
		var obj map[string]interface{}
		readYAML(t, filepath.Join(dir, tc.InputPath), &obj)
		out, err := runScript(t, filepath.Join(actions, "discovery.lua"), obj)
		if err != nil {
			t.Fatalf("discovery.lua on %s: %v", tc.InputPath, err)
		}
		got := map[string]bool{}
		for name, a := range out.(map[string]interface{}) {
			got[name] = a.(map[string]interface{})["disabled"] == true
		}
		want := map[string]bool{}
		for _, r := range tc.Result {
			want[r.Name] = r.Disabled
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("discovery on %s: got %v, want %v", tc.InputPath, got, want)
		}
	}
	for _, tc := range spec.ActionTests {
		var obj map[string]interface{}
		readYAML(t, filepath.Join(dir, tc.InputPath), &obj)
		out, err := runScript(t, filepath.Join(actions, tc.Action, "action.lua"), obj)
		if tc.ExpectedErrorMatch != "" {
			if err == nil || !contains(err.Error(), tc.ExpectedErrorMatch) {
				t.Errorf("%s on %s: want error %q, got %v", tc.Action, tc.InputPath, tc.ExpectedErrorMatch, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s on %s: %v", tc.Action, tc.InputPath, err)
		}
		var want map[string]interface{}
		readYAML(t, filepath.Join(dir, tc.ExpectedOutputPath), &want)
		if !reflect.DeepEqual(normalize(out), normalize(want)) {
			g, _ := json.MarshalIndent(out, "", "  ")
			w, _ := json.MarshalIndent(want, "", "  ")
			t.Errorf("%s on %s:\ngot  %s\nwant %s", tc.Action, tc.InputPath, g, w)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// normalize round-trips through JSON so numbers and maps compare alike.
func normalize(v interface{}) interface{} {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	var out interface{}
	if err := json.Unmarshal(data, &out); err != nil {
		panic(err)
	}
	return out
}

func kubectl(t *testing.T, stdin []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("kubectl", args...)
	if stdin != nil {
		cmd.Stdin = strings.NewReader(string(stdin))
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestLiveObjects puts a real ScalingPhase in each state of health_test.yaml
// on the local control plane (no operator runs there: the test writes the
// status through the status subresource, as the operator would), reads it
// back as Argo CD would and checks health.lua and discovery.lua on it.
// Fields the installed CRD does not know yet are pruned by the apiserver:
// such cases are reported as PENDING, not passed.
func TestLiveObjects(t *testing.T) {
	if os.Getenv("LADDER_ARGOCD_LIVE") != "1" {
		t.Skip("set LADDER_ARGOCD_LIVE=1 with KUBECONFIG and LADDER_ROOT (e2e/tests/argocd.rs does)")
	}
	root := os.Getenv("LADDER_ROOT")
	if os.Getenv("KUBECONFIG") == "" || root == "" {
		t.Fatal("LADDER_ARGOCD_LIVE=1 needs KUBECONFIG and LADDER_ROOT")
	}
	kubectl(t, nil, "apply", "--server-side", "--force-conflicts", "--field-manager=ladder-e2e",
		"-f", filepath.Join(root, "crds/manifests/ladder.dev_crds.yaml"))
	kubectl(t, nil, "wait", "--for=condition=Established", "--timeout=30s", "crd/scalingphases.ladder.dev")
	ns := fmt.Sprintf("argocd-health-%d", time.Now().UnixNano()%1000000)
	kubectl(t, nil, "create", "namespace", ns)
	defer exec.Command("kubectl", "delete", "namespace", ns, "--wait=false").Run()

	var spec struct {
		Tests []struct {
			HealthStatus health `json:"healthStatus"`
			InputPath    string `json:"inputPath"`
		} `json:"tests"`
	}
	readYAML(t, filepath.Join(dir, "health_test.yaml"), &spec)
	checked := map[string]bool{}
	for _, tc := range spec.Tests {
		var want map[string]interface{}
		readYAML(t, filepath.Join(dir, tc.InputPath), &want)
		name := strings.ReplaceAll(strings.TrimSuffix(filepath.Base(tc.InputPath), ".yaml"), "_", "-")
		meta := want["metadata"].(map[string]interface{})
		generation := int64(meta["generation"].(float64))
		obj := map[string]interface{}{
			"apiVersion": "ladder.dev/v1alpha1", "kind": "ScalingPhase",
			"metadata": map[string]interface{}{"name": name, "namespace": ns},
			"spec":     want["spec"],
		}
		// The live generation must be the test's: each spec change is one.
		// Create with phase p or q and flip between them, ending at p.
		p := int(want["spec"].(map[string]interface{})["phase"].(float64))
		q := (p + 1) % 5
		flips := int(generation - 1)
		current := p
		if flips%2 == 1 {
			current = q
		}
		obj["spec"] = withPhase(want["spec"], current)
		data, _ := json.Marshal(obj)
		kubectl(t, data, "apply", "--server-side", "--field-manager=ladder-e2e", "-f", "-")
		for i := 0; i < flips; i++ {
			if current == p {
				current = q
			} else {
				current = p
			}
			patch := fmt.Sprintf(`{"spec":{"phase":%d}}`, current)
			kubectl(t, nil, "-n", ns, "patch", "scalingphase", name, "--type=merge", "-p", patch)
		}
		var live map[string]interface{}
		if err := json.Unmarshal(kubectl(t, nil, "-n", ns, "get", "scalingphase", name, "-o", "json"), &live); err != nil {
			t.Fatal(err)
		}
		liveGen := int64(live["metadata"].(map[string]interface{})["generation"].(float64))
		if liveGen != generation {
			t.Fatalf("%s: live generation %d, want %d", name, liveGen, generation)
		}
		if status, ok := want["status"]; ok {
			b, _ := json.Marshal(map[string]interface{}{"status": status})
			kubectl(t, nil, "-n", ns, "patch", "scalingphase", name, "--subresource=status", "--type=merge", "-p", string(b))
		}
		if err := json.Unmarshal(kubectl(t, nil, "-n", ns, "get", "scalingphase", name, "-o", "json"), &live); err != nil {
			t.Fatal(err)
		}
		if ws, ok := want["status"].(map[string]interface{}); ok {
			ls, _ := live["status"].(map[string]interface{})
			var pruned []string
			for k := range ws {
				if _, kept := ls[k]; !kept {
					pruned = append(pruned, "status."+k)
				}
			}
			if len(pruned) > 0 {
				t.Logf("PENDING %s: the installed CRD prunes %v (not in its schema yet)", tc.InputPath, pruned)
				continue
			}
		}
		got := healthOf(t, live)
		if got != tc.HealthStatus {
			t.Errorf("live %s: got %+v, want %+v", name, got, tc.HealthStatus)
		}
		if _, err := runScript(t, filepath.Join(dir, "actions", "discovery.lua"), live); err != nil {
			t.Errorf("discovery.lua on live %s: %v", name, err)
		}
		checked[got.Status] = true
		t.Logf("live %s: %s", name, got.Status)
	}
	for _, s := range []string{"Healthy", "Progressing", "Degraded", "Suspended"} {
		if !checked[s] {
			t.Errorf("no live object was checked in state %s", s)
		}
	}
}

func withPhase(spec interface{}, phase int) map[string]interface{} {
	out := map[string]interface{}{}
	for k, v := range spec.(map[string]interface{}) {
		out[k] = v
	}
	out["phase"] = phase
	return out
}

// TestArgocdCmSnippet: examples/gitops/argocd-cm.yaml carries exactly these
// scripts (hack/argocd-cm.sh writes it), in the keys Argo CD reads.
func TestArgocdCmSnippet(t *testing.T) {
	var cm struct {
		Data map[string]string `json:"data"`
	}
	readYAML(t, filepath.Join("..", "..", "examples", "gitops", "argocd-cm.yaml"), &cm)
	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	stale := "examples/gitops/argocd-cm.yaml is stale: run hack/argocd-cm.sh"
	if cm.Data["resource.customizations.health.ladder.dev_ScalingPhase"] != read("health.lua") {
		t.Error(stale + " (health.lua)")
	}
	var actions struct {
		Discovery   string `json:"discovery.lua"`
		Definitions []struct {
			Name   string `json:"name"`
			Action string `json:"action.lua"`
		} `json:"definitions"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["resource.customizations.actions.ladder.dev_ScalingPhase"]), &actions); err != nil {
		t.Fatal(err)
	}
	if actions.Discovery != read("actions/discovery.lua") {
		t.Error(stale + " (discovery.lua)")
	}
	want := []string{"approve-transition", "pause", "resume"}
	if len(actions.Definitions) != len(want) {
		t.Fatalf("%d action definitions, want %v", len(actions.Definitions), want)
	}
	for i, d := range actions.Definitions {
		if d.Name != want[i] || d.Action != read(filepath.Join("actions", d.Name, "action.lua")) {
			t.Errorf("%s (%s)", stale, d.Name)
		}
	}
}
