output "alb_security_group_id" {
  description = "Security group of the ALB."
  value       = aws_security_group.alb.id
}

output "tasks_security_group_id" {
  description = "Security group of the ECS tasks."
  value       = aws_security_group.tasks.id
}

output "rds_security_group_id" {
  description = "Security group of the RDS instance."
  value       = aws_security_group.rds.id
}

output "redis_security_group_id" {
  description = "Security group of the ElastiCache replication group."
  value       = aws_security_group.redis.id
}
