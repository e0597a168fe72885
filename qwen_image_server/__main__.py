from qwen_image_server.cli import main

raise SystemExit(main())
