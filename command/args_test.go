package command

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseArgs(t *testing.T) {
	for line, want := range map[string][]any{
		"":                                   nil,
		"  workers  ":                        {"workers"},
		"restart all":                        {"restart", "all"},
		`restart 123 {"timeout":5000}`:       {"restart", 123.0, map[string]any{"timeout": 5000.0}},
		`upgrade all "/opt/my app/v2"`:       {"upgrade", "all", "/opt/my app/v2"},
		`say "a \"quoted\" word" and\\not`:   {"say", `a "quoted" word`, `and\\not`},
		`x [1, "]", {"a": "}"}] -2.5e3 0x10`: {"x", []any{1.0, "]", map[string]any{"a": "}"}}, -2500.0, "0x10"},
		`x {"nested": {"k": [1,2]}} tail`:    {"x", map[string]any{"nested": map[string]any{"k": []any{1.0, 2.0}}}, "tail"},
		"x NaN Inf 1e999":                    {"x", "NaN", "Inf", "1e999"},
	} {
		got, err := parseArgs(line)
		require.NoError(t, err, line)
		assert.Equal(t, want, got, line)
	}
	for _, bad := range []string{`say "open`, `x {"a": 1`, `x {"a": }`, `x [1,]`} {
		_, err := parseArgs(bad)
		assert.Error(t, err, bad)
	}
}

// The parser never panics, and the arguments of any line it accepts,
// written back as a command line (strings quoted, JSON as JSON), parse to
// the same arguments.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{"restart all", `restart 1 {"timeout":1}`, `"a\"b"`, `[1,{"x":"]"}]`, `{"`, `"\`, "1e5 -0 x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		args, err := parseArgs(line)
		if err != nil {
			return
		}
		var words []string
		for _, a := range args {
			switch v := a.(type) {
			case string:
				words = append(words, `"`+strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(v)+`"`)
			case float64:
				words = append(words, strconv.FormatFloat(v, 'g', -1, 64))
			default:
				b, err := json.Marshal(v)
				require.NoError(t, err)
				words = append(words, string(b))
			}
		}
		again, err := parseArgs(strings.Join(words, " "))
		require.NoError(t, err, "rendered %q", words)
		assert.Equal(t, args, again, "line %q rendered %q", line, words)
	})
}
