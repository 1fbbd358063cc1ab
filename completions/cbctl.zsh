#compdef cbctl

_cbctl_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _CBCTL_COMPLETE=complete_zsh cbctl)
}

compdef _cbctl_completion cbctl
