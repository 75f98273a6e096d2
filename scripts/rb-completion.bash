# rblock: qcow2 for the NBD world.  SPDX-License-Identifier: BSD-3-Clause
# Bash completion for the rblock programs, read from each program's own --help: a new option
# is completed without editing this file.  Installed once per program name (bash-completion
# loads completions by command name); the build appends "complete ... PROGRAM" to each copy.

# _rblock_help_options PROGRAM: one line per option in PROGRAM's --help, "NAME ARG" where ARG
# is "-" (no argument), "?" (optional, --name[=ARG]) or the argument's placeholder (FILE,
# SIZE, raw|qcow2...).  The option column of a help line ends at two spaces or at the first
# word after an option's argument; "-c, --cluster-size SIZE" gives both names the argument;
# an option on several lines ("--repair leaks", "--repair all") gets "leaks|all".
_rblock_help_options ()
{
  local line tok arg n got
  local -a names order=()
  local -A args=()
  while IFS= read -r line; do
    [[ $line =~ ^[[:space:]]+- ]] || continue
    line=${line#"${line%%[![:space:]]*}"}
    names=() arg=- got=0
    for tok in ${line%%  *}; do
      tok=${tok%,}
      case $tok in
        /) continue ;;
        --*\[=*) names+=("${tok%%\[*}"); arg="?" ;;
        --*=*) names+=("${tok%%=*}"); arg=${tok#*=} ;;
        -?*) names+=("$tok") ;;
        *) [ $got = 0 ] && [ ${#names[@]} -gt 0 ] || break
           arg=$tok got=1 ;;
      esac
    done
    for n in "${names[@]}"; do
      [[ $n =~ ^--?[A-Za-z0-9][-A-Za-z0-9_]*$ ]] || continue
      if [ -z "${args[$n]:-}" ]; then
        order+=("$n"); args[$n]=$arg
      elif [ "$arg" != - ] && [ "${args[$n]}" != "$arg" ]; then
        args[$n]="${args[$n]}|$arg"
      fi
    done
  done < <(LC_ALL=C "$1" --help 2>/dev/null)
  for n in "${order[@]}"; do printf '%s %s\n' "$n" "${args[$n]}"; done
}

# _rblock_complete: the completion function (bash's COMP_WORDS/COMP_CWORD protocol).
# Options complete from --help; an argument spelled a|b|c completes to its words; FILE, SIZE
# and other placeholders fall back to file names (complete -o default), as do operands.
_rblock_complete ()
{
  local prog=${COMP_WORDS[0]} cur=${COMP_WORDS[COMP_CWORD]} opt="" eq=0 arg line words=""
  local -a opts=()
  COMPREPLY=()
  # --name=value: readline splits the word at "=" (COMP_WORDBREAKS).
  if [ "$cur" = "=" ]; then
    opt=${COMP_WORDS[COMP_CWORD-1]} cur="" eq=1
  elif [ "$COMP_CWORD" -ge 2 ] && [ "${COMP_WORDS[COMP_CWORD-1]}" = "=" ]; then
    opt=${COMP_WORDS[COMP_CWORD-2]} eq=1
  elif [ "$COMP_CWORD" -ge 1 ] && [[ $cur != -* ]]; then
    opt=${COMP_WORDS[COMP_CWORD-1]}
  fi
  while IFS= read -r line; do opts+=("$line"); done < <(_rblock_help_options "$prog")
  if [[ $opt == -* ]]; then
    for line in "${opts[@]}"; do
      [ "${line%% *}" = "$opt" ] || continue
      arg=${line#* }
      # An optional argument is only ever given as --name=ARG.
      if [ "$arg" = - ] || { [ "$arg" = "?" ] && [ $eq = 0 ]; }; then
        break
      fi
      # Literal choices (raw|qcow2) complete to themselves; a placeholder (FILE|-) to files.
      [[ $arg == *"|"* && $arg != *[A-Z]* ]] && COMPREPLY=($(compgen -W "${arg//|/ }" -- "$cur"))
      return 0
    done
  fi
  if [[ $cur == -* ]]; then
    for line in "${opts[@]}"; do
      words+=" ${line%% *}"
      [ "${line#* }" = "?" ] && words+=" ${line%% *}="
    done
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
  fi
  return 0
}
