# shellcheck shell=bash disable=SC2034  # WORDS and TRAIN_FLAGS are for the script that sources this
# Command-line options for the launch scripts, in both forms gcloud accepts: `--opt value` and `--opt=value`.
# Sourced, not run. A script lists its options, then calls parse_options "$@":
#
#   VALUE_OPTIONS=(--zone:ZONE --workers:WORKERS)   # options that take a value, and the variable each sets
#   SWITCH_OPTIONS=(--spot:SPOT --dry-run:DRY_RUN)  # options without a value: the variable is set to 1
#
# parse_options sets those variables (whose names must not start with an underscore: the parser's own do),
# leaves the words that are not options (the action) in WORDS and what follows `--` in TRAIN_FLAGS, and calls
# the script's `help` for -h/--help. Anything else is one line on stderr
# through the script's `die` (exit status 2) before anything is made. Every launch script has this one grammar:
# its options anywhere before `--`, in either form, and everything after `--` for distmnist.train as it is
# (`-- --epochs 3` and `-- --epochs=3` alike).

_option_variable() {  # _option_variable NAME ENTRY...: the variable of option NAME among ENTRY (--opt:VAR)
  local _name=$1 _entry
  shift
  for _entry in "$@"; do
    if [[ ${_entry%%:*} == "$_name" ]]; then
      echo "${_entry#*:}"
      return 0
    fi
  done
  return 1
}

# Every word after `--` is a flag (-x, --x, --x=value) or the value of the flag before it (--epochs 3), as
# distmnist.train reads them; a stray word would stop it (after the machines started): refused here instead.
_check_train_words() {
  local _word _previous=""
  for _word in ${TRAIN_FLAGS[@]+"${TRAIN_FLAGS[@]}"}; do
    if [[ $_word != -* && ! ($_previous == -* && $_previous != *=*) ]]; then
      die "train flags go after -- as --flag=value or --flag value, got '$_word'"
    fi
    _previous=$_word
  done
}

parse_options() {
  WORDS=()
  TRAIN_FLAGS=()
  local _word _name _value _variable
  while (($#)); do
    _word=$1
    shift
    case $_word in
      --) TRAIN_FLAGS=("$@"); _check_train_words; return 0 ;;
      -h | --help) help; exit 0 ;;
      --*=*) _name=${_word%%=*} _value=${_word#*=} ;;
      -*) _name=$_word _value="" ;;
      *) WORDS+=("$_word"); continue ;;
    esac
    if _variable=$(_option_variable "$_name" ${SWITCH_OPTIONS[@]+"${SWITCH_OPTIONS[@]}"}); then
      [[ $_word == "$_name" ]] || die "$_name takes no value, got '$_word'"
      printf -v "$_variable" '%s' 1
    elif _variable=$(_option_variable "$_name" ${VALUE_OPTIONS[@]+"${VALUE_OPTIONS[@]}"}); then
      if [[ $_word == "$_name" ]]; then  # --opt value
        [[ $# -gt 0 && $1 != --* ]] || die "$_name needs a value ($_name VALUE or $_name=VALUE)"
        _value=$1
        shift
      fi
      [[ -n $_value ]] || die "$_name needs a value ($_name VALUE or $_name=VALUE)"
      printf -v "$_variable" '%s' "$_value"
    else
      die "unknown option '$_word' (see --help; train flags go after --)"
    fi
  done
}

# train_flag_sets WORD NAME...: whether WORD, one word after `--`, sets one of the distmnist.train flags NAME in a
# form absl reads: --NAME, --NAME=VALUE, -NAME, -NAME=VALUE, or --noNAME for a boolean. The scripts refuse the
# flags they set themselves.
train_flag_sets() {
  local _word=$1 _name
  shift
  for _name in "$@"; do
    [[ $_word =~ ^--?(no)?$_name(=|$) ]] && return 0
  done
  return 1
}
