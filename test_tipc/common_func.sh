# Shared helpers of the TIPC scripts (sourced by prepare.sh and
# test_train_inference_python.sh; not run on its own).
#
# The config is read by line position: TIPC_LAYOUT below lists, for every line
# of train_infer_python.txt, what must be there. Every value is checked against
# its type when the file is read, and every error names the file, the line and
# the key. The format is described line by line in test_tipc/README.md.

TIPC_MODES=(lite_train_lite_infer lite_train_whole_infer whole_infer whole_train_whole_infer)
# Characters a shell would interpret; commands never go through a shell, so they are refused.
TIPC_SHELL_CHARS='["'"'"'`$\\|;&<>()*?]'

# One entry per config line: "kind|key|type|per_mode"
#   kind      header (a section title), sep (a "##" separator) or param (key:value)
#   type      what the value must be (see tipc_check_item); a plural type is a
#             list of "|"-separated alternatives, every one of which is run
#   per_mode  "mode" when the value may be written "mode=value|mode=value|..."
TIPC_LAYOUT=(
  "header|train_params||"
  "param|model_name|name|"
  "param|python|word|"
  "param|gpu_list|gpu_sets|"
  "param|-o Global.device|devices|"
  "param|-o Train.amp|bools|"
  "param|-o Train.max_steps|int|mode"
  "param|-o Global.output_dir|path|"
  "param|-o Train.batch_size|int|mode"
  "param|-o Global.pretrained|path_or_null|mode"
  "param|train_model_name|checkpoint|"
  "param|train_infer_img_dir|path|mode"
  "param|train_infer_text_file|path|mode"
  "param|-o Data.train.path|path_or_null|mode"
  "param|-o Tokenizer.vocab_file|path|mode"
  "sep|##||"
  "param|trainer|trainers|"
  "param|norm_train|command|"
  "param|pact_train|null|"
  "param|fpgm_train|null|"
  "param|distill_train|null|"
  "sep|##||"
  "header|eval_params||"
  "param|eval|command_or_null|"
  "param|--data|path|mode"
  "param|eval_metrics|command_or_null|"
  "sep|##||"
  "header|infer_params||"
  "param|--weights|empty|"
  "param|--output|empty|"
  "param|norm_export|command|"
  "param|quant_export|null|"
  "param|fpgm_export|null|"
  "param|distill_export|null|"
  "param|inference|command|"
  "param|infer_towers|towers|"
  "param|--device|devices|"
  "param|--no-onednn|bools|"
  "param|--threads|ints|"
  "param|--batch-size|ints|"
  "param|--tensorrt|bools|"
  "param|--precision|precisions|"
)

# Filled by tipc_read_config:
declare -A TIPC_RAW=()     # key -> the value as written
declare -A TIPC_LINE=()    # key -> its line number in the file (1-based)
declare -A TIPC_VALUE=()   # key -> the value for this mode (per-mode lines resolved)
TIPC_CONFIG=""
TIPC_MODE=""

tipc_die() {
  echo "error: $*" >&2
  exit 2
}

tipc_check_mode() {
  local mode=$1 known
  for known in "${TIPC_MODES[@]}"; do
    [ "$mode" = "$known" ] && return 0
  done
  tipc_die "unknown mode '$mode'; use one of: ${TIPC_MODES[*]}"
}

# tipc_check_item TYPE VALUE: 0 when VALUE is one valid item of TYPE (singular),
# otherwise 1 with the reason in TIPC_WHY.
tipc_check_item() {
  local type=$1 value=$2
  TIPC_WHY=""
  case "$type" in
    name)
      [[ "$value" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] && return 0
      TIPC_WHY="a name of letters, digits, '_', '.', '-' is expected" ;;
    word)
      [[ "$value" =~ ^[^[:space:]]+$ ]] && [ "$value" != null ] && return 0
      TIPC_WHY="one word (a program) is expected" ;;
    gpu_set)
      [[ "$value" =~ ^[0-9]+(,[0-9]+)*$ ]] && return 0
      TIPC_WHY="GPU ids like '0' or '0,1' are expected" ;;
    device)
      [[ "$value" = cpu || "$value" = gpu ]] && return 0
      TIPC_WHY="'cpu' or 'gpu' is expected" ;;
    bool)
      [[ "$value" = True || "$value" = False ]] && return 0
      TIPC_WHY="a boolean must be written True or False" ;;
    int)
      [[ "$value" =~ ^[1-9][0-9]*$ ]] && return 0
      TIPC_WHY="a positive integer is expected" ;;
    path)
      [[ "$value" =~ ^[^[:space:]]+$ ]] && [ "$value" != null ] && return 0
      TIPC_WHY="a path (without spaces) is expected" ;;
    path_or_null)
      [[ "$value" =~ ^[^[:space:]]+$ ]] && return 0
      TIPC_WHY="a path (without spaces) or null is expected" ;;
    checkpoint)
      [[ "$value" = latest || "$value" =~ ^step_[0-9]+$ ]] && return 0
      TIPC_WHY="'latest' or a checkpoint folder name like step_000005 is expected" ;;
    trainer)
      [[ "$value" =~ ^(norm_train|pact_train|fpgm_train|distill_train)$ ]] && return 0
      TIPC_WHY="one of norm_train, pact_train, fpgm_train, distill_train is expected" ;;
    tower)
      [[ "$value" = image || "$value" = text ]] && return 0
      TIPC_WHY="'image' or 'text' is expected" ;;
    precision)
      [[ "$value" = fp32 || "$value" = fp16 ]] && return 0
      TIPC_WHY="'fp32' or 'fp16' is expected" ;;
    command|command_or_null)
      if [ "$value" = null ]; then
        [ "$type" = command_or_null ] && return 0
        TIPC_WHY="a command is required here (null is not allowed)"
      elif [ -z "$value" ]; then
        TIPC_WHY="a command (script and arguments) is expected"
      elif [[ "$value" =~ $TIPC_SHELL_CHARS ]]; then
        TIPC_WHY="commands are split on spaces and never given to a shell: quotes, \$, \\, |, ;, &, <, >, (, ), * and ? are not allowed"
      else
        return 0
      fi ;;
    null)
      [ "$value" = null ] && return 0
      TIPC_WHY="ernievil2 has no such step; this line must be null" ;;
    empty)
      [ -z "$value" ] && return 0
      TIPC_WHY="the value is filled in by the test script; leave it empty" ;;
    *)
      TIPC_WHY="internal error: unknown type '$type'" ;;
  esac
  return 1
}

# tipc_bad LINE KEY MESSAGE...
tipc_bad() {
  tipc_die "$TIPC_CONFIG line $1 ($2): ${*:3}"
}

# Split VALUE on "|" into TIPC_ITEMS, rejecting empty and repeated items.
tipc_split_alternatives() {
  local line=$1 key=$2 value=$3 item seen=" "
  TIPC_ITEMS=()
  if [ -z "$value" ]; then
    tipc_bad "$line" "$key" "no value"
  fi
  if [[ "$value" == \|* || "$value" == *\| || "$value" == *\|\|* ]]; then
    tipc_bad "$line" "$key" "malformed alternative list '$value': an alternative is empty"
  fi
  IFS='|' read -r -a TIPC_ITEMS <<< "$value"
  for item in "${TIPC_ITEMS[@]}"; do
    if [[ "$seen" == *" $item "* ]]; then
      tipc_bad "$line" "$key" "malformed alternative list '$value': '$item' is listed twice"
    fi
    seen+="$item "
  done
}

# Check one param line's value; for per-mode lines also record the value of
# every mode written (TIPC_MODEVAL["key|mode"]).
declare -A TIPC_MODEVAL=()
tipc_check_value() {
  local line=$1 key=$2 type=$3 per_mode=$4 value=$5 item mode val
  local plural=""
  case "$type" in
    gpu_sets) plural=gpu_set ;; devices) plural=device ;; bools) plural=bool ;;
    ints) plural=int ;; trainers) plural=trainer ;; towers) plural=tower ;;
    precisions) plural=precision ;;
  esac
  if [ -n "$plural" ]; then
    tipc_split_alternatives "$line" "$key" "$value"
    for item in "${TIPC_ITEMS[@]}"; do
      tipc_check_item "$plural" "$item" || tipc_bad "$line" "$key" "'$item': $TIPC_WHY"
    done
    return 0
  fi
  if [ -n "$per_mode" ] && [[ "$value" =~ ^[A-Za-z_]+= ]]; then
    tipc_split_alternatives "$line" "$key" "$value"
    for item in "${TIPC_ITEMS[@]}"; do
      if [[ ! "$item" =~ ^[A-Za-z_]+= ]]; then
        tipc_bad "$line" "$key" "'$item': every alternative of a per-mode value must be MODE=VALUE"
      fi
      mode=${item%%=*}
      val=${item#*=}
      local known=0 m
      for m in "${TIPC_MODES[@]}"; do [ "$m" = "$mode" ] && known=1; done
      [ "$known" = 1 ] || tipc_bad "$line" "$key" "unknown mode '$mode' in '$item'; modes are: ${TIPC_MODES[*]}"
      [ -n "${TIPC_MODEVAL["$key|$mode"]+set}" ] && tipc_bad "$line" "$key" "mode '$mode' is given twice"
      tipc_check_item "$type" "$val" || tipc_bad "$line" "$key" "'$val' (mode $mode): $TIPC_WHY"
      TIPC_MODEVAL["$key|$mode"]=$val
    done
    return 0
  fi
  if [[ "$value" == *\|* ]]; then
    tipc_bad "$line" "$key" "'$value': this line takes one value, not alternatives"
  fi
  tipc_check_item "$type" "$value" || tipc_bad "$line" "$key" "'$value': $TIPC_WHY"
  if [ -n "$per_mode" ]; then
    for mode in "${TIPC_MODES[@]}"; do TIPC_MODEVAL["$key|$mode"]=$value; done
  fi
}

# The key expected at each line, to point at the right line when a key is misplaced.
tipc_expected_line_of() {
  local wanted=$1 i kind key rest
  for i in "${!TIPC_LAYOUT[@]}"; do
    IFS='|' read -r kind key rest <<< "${TIPC_LAYOUT[$i]}"
    if [ "$kind" = param ] && [ "$key" = "$wanted" ]; then
      echo $((i + 1))
      return 0
    fi
  done
  return 1
}

# tipc_read_config CONFIG MODE: read and check the whole file, then resolve the
# per-mode values MODE needs into TIPC_VALUE. Exits 2 with a message on any error.
tipc_read_config() {
  TIPC_CONFIG=$1
  TIPC_MODE=$2
  tipc_check_mode "$TIPC_MODE"
  [ -f "$TIPC_CONFIG" ] || tipc_die "config file '$TIPC_CONFIG' not found"
  local -a lines=()
  mapfile -t lines < "$TIPC_CONFIG"
  # Ignore trailing blank lines; inside the layout every line counts.
  local n=${#lines[@]}
  while [ "$n" -gt 0 ] && [[ "${lines[$((n - 1))]}" =~ ^[[:space:]]*$ ]]; do n=$((n - 1)); done
  local expected=${#TIPC_LAYOUT[@]}
  local i kind key type per_mode text line found value where section=""
  for i in "${!TIPC_LAYOUT[@]}"; do
    IFS='|' read -r kind key type per_mode <<< "${TIPC_LAYOUT[$i]}"
    line=$((i + 1))
    if [ "$i" -ge "$n" ]; then
      [ "$kind" = param ] || key="the ${kind/sep/separator} '$key'"
      tipc_die "$TIPC_CONFIG ends at line $n, but the layout has $expected lines; line $line should be $key (see test_tipc/README.md)"
    fi
    text=${lines[$i]%$'\r'}
    text=${text%"${text##*[![:space:]]}"}   # drop trailing spaces
    case "$kind" in
      header)
        section=$key
        if [[ ! "$text" =~ ^=+${key}=+$ ]]; then
          tipc_die "$TIPC_CONFIG line $line: expected the section header ===${key}=== here, found '$text'"
        fi
        continue ;;
      sep)
        [ "$text" = "##" ] || tipc_die "$TIPC_CONFIG line $line: expected the separator '##' closing the $section section here, found '$text'"
        continue ;;
    esac
    if [[ "$text" != *:* ]]; then
      tipc_die "$TIPC_CONFIG line $line: expected '$key:VALUE' ($section section), found '$text' (no ':')"
    fi
    found=${text%%:*}
    value=${text#*:}
    if [ "$found" != "$key" ]; then
      if where=$(tipc_expected_line_of "$found"); then
        tipc_die "$TIPC_CONFIG line $line: expected key '$key' ($section section), found '$found', which belongs at line $where"
      fi
      tipc_die "$TIPC_CONFIG line $line: expected key '$key' ($section section), found unknown key '$found'"
    fi
    TIPC_RAW[$key]=$value
    TIPC_LINE[$key]=$line
    tipc_check_value "$line" "$key" "$type" "$per_mode" "$value"
  done
  if [ "$n" -gt "$expected" ]; then
    tipc_die "$TIPC_CONFIG line $((expected + 1)): unexpected line '${lines[$expected]}' after the last line of the layout (line $expected, ${key})"
  fi
  tipc_check_trainers
  tipc_resolve_mode
}

# Every trainer listed must have a command.
tipc_check_trainers() {
  local trainer
  tipc_split_alternatives "${TIPC_LINE[trainer]}" trainer "${TIPC_RAW[trainer]}"
  for trainer in "${TIPC_ITEMS[@]}"; do
    if [ "${TIPC_RAW[$trainer]}" = null ]; then
      tipc_bad "${TIPC_LINE[trainer]}" trainer "'$trainer' is listed but line ${TIPC_LINE[$trainer]} ($trainer) is null"
    fi
  done
}

# The keys a mode reads, resolved to their value for TIPC_MODE.
tipc_resolve_mode() {
  local key i kind type per_mode
  local -a skip=()
  if [ "$TIPC_MODE" = whole_infer ]; then
    # Nothing is trained: these are not read.
    skip=("-o Train.max_steps" "-o Train.batch_size" "-o Data.train.path")
  fi
  for i in "${!TIPC_LAYOUT[@]}"; do
    IFS='|' read -r kind key type per_mode <<< "${TIPC_LAYOUT[$i]}"
    [ "$kind" = param ] || continue
    if [ -z "$per_mode" ]; then
      TIPC_VALUE[$key]=${TIPC_RAW[$key]}
      continue
    fi
    local skipped=0 s
    for s in "${skip[@]+"${skip[@]}"}"; do [ "$s" = "$key" ] && skipped=1; done
    [ "$skipped" = 1 ] && continue
    if [ -z "${TIPC_MODEVAL["$key|$TIPC_MODE"]+set}" ]; then
      tipc_bad "${TIPC_LINE[$key]}" "$key" "no value for mode $TIPC_MODE in '${TIPC_RAW[$key]}'"
    fi
    TIPC_VALUE[$key]=${TIPC_MODEVAL["$key|$TIPC_MODE"]}
  done
  if [ "$TIPC_MODE" != whole_infer ] && [ "${TIPC_VALUE[-o Data.train.path]}" = null ]; then
    tipc_bad "${TIPC_LINE[-o Data.train.path]}" "-o Data.train.path" "mode $TIPC_MODE trains, so it needs training data (not null)"
  fi
}

# tipc_alternatives KEY: the alternatives of a list line in TIPC_ITEMS.
tipc_alternatives() {
  tipc_split_alternatives "${TIPC_LINE[$1]}" "$1" "${TIPC_RAW[$1]}"
}

# The data sets of a mode: "lite" and/or "whole" (train side, then infer side).
tipc_mode_datasets() {
  case "$1" in
    lite_train_lite_infer) echo lite ;;
    lite_train_whole_infer) echo lite whole ;;
    whole_infer | whole_train_whole_infer) echo whole ;;
  esac
}
