package command

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// parseArgs splits a command line as node-cluster-service does: words
// separated by spaces; "quoted strings" (with \" and \\ inside) are one
// word; JSON objects and arrays are kept whole and decoded; words that are
// JSON numbers become float64. Everything else is a string.
func parseArgs(line string) ([]any, error) {
	var args []any
	for i := 0; i < len(line); {
		switch c := line[i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '"':
			s, n, err := quoted(line[i:])
			if err != nil {
				return nil, err
			}
			args = append(args, s)
			i += n
		case c == '{' || c == '[':
			n, err := jsonEnd(line[i:])
			if err != nil {
				return nil, err
			}
			var v any
			if err := json.Unmarshal([]byte(line[i:i+n]), &v); err != nil {
				return nil, fmt.Errorf("argument %d: %q is not valid JSON: %v", len(args)+1, line[i:i+n], err)
			}
			args = append(args, v)
			i += n
		default:
			j := i
			for j < len(line) && !strings.ContainsRune(" \t\n\r", rune(line[j])) {
				j++
			}
			args = append(args, word(line[i:j]))
			i = j
		}
	}
	return args, nil
}

// quoted reads a "quoted string" at the start of s and returns it and the
// number of bytes it took.
func quoted(s string) (string, int, error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '\\':
			if i+1 < len(s) {
				i++
			}
			b.WriteByte(s[i])
		case '"':
			return b.String(), i + 1, nil
		default:
			b.WriteByte(s[i])
		}
	}
	return "", 0, fmt.Errorf("unterminated quoted string: %s", s)
}

// jsonEnd finds where the JSON object or array at the start of s ends,
// skipping brackets inside strings.
func jsonEnd(s string) (int, error) {
	depth, inString := 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inString && c == '\\':
			i++
		case c == '"':
			inString = !inString
		case inString:
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
			if depth == 0 {
				return i + 1, nil
			}
		}
	}
	return 0, fmt.Errorf("unterminated JSON: %s", s)
}

// word is a number when it is one, else the string itself.
func word(w string) any {
	if f, err := strconv.ParseFloat(w, 64); err == nil && json.Valid([]byte(w)) {
		return f
	}
	return w
}
