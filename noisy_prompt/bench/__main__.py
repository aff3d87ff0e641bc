from noisy_prompt.bench import main

main()
